//! Panics inside actors. actix drops an actor whose handler panics, together with its
//! supervisor, so every later `send` fails; a supervisor restarts only an actor that
//! *stops*. Every handler body and every future an actor runs goes through these guards:
//! a panic is logged and turned into a deliberate stop, which the supervisor restarts.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use actix::prelude::*;
use futures_util::FutureExt;

/// The message a panic carried.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs a handler's synchronous body. On a panic the actor stops (its supervisor restarts
/// it) and the answer is `None`.
pub(crate) fn guarded<A, R>(
    act: &mut A,
    ctx: &mut Context<A>,
    what: &'static str,
    f: impl FnOnce(&mut A, &mut Context<A>) -> R,
) -> Option<R>
where
    A: Actor<Context = Context<A>>,
{
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(act, ctx)));
    match out {
        Ok(r) => Some(r),
        Err(p) => {
            tracing::error!("{what} panicked ({}); its supervisor restarts the actor", panic_message(&*p));
            ctx.stop();
            None
        }
    }
}

/// `fut`, with a panic while polling it turned into `Err(message)`.
pub(crate) fn catch<F: Future>(fut: F) -> impl Future<Output = Result<F::Output, String>> {
    AssertUnwindSafe(fut).catch_unwind().map(|r| r.map_err(|p| panic_message(&*p)))
}

/// The answer a caller gets when the actor panicked while handling its message.
pub(crate) fn panicked(what: &str) -> String {
    format!("internal error: the {what} panicked and was restarted; retry")
}
