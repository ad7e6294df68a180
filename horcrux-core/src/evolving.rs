//! The binary encoding of structs that grow: a field count, then the fields in order.
//!
//! bincode's derive is positional, so a field added to a struct would make every record
//! that holds it unreadable. The structs of the replicated state and of requests use
//! [`evolving!`](crate::evolving) instead: fields present since the struct was first
//! encoded are listed first, fields added later go after them with the value a record
//! written before them decodes to. A record with fewer fields than the base list, or more
//! than this build knows (written by a newer Horcrux), is refused. Enums stay positional:
//! a variant is added at the end, and a command that needs another field is a new variant.
//!
//! ```ignore
//! evolving!(User { userid, comment, enable } added { email: String::new() });
//! ```
//!
//! The struct pattern and the struct expression the macro writes list every field, so a
//! field added to the struct but not to the macro does not compile.

/// Implements bincode's `Encode`, `Decode` and `BorrowDecode` for a struct as a count of
/// fields followed by the fields; see the module documentation.
#[macro_export]
macro_rules! evolving {
    (@one $x:ident) => {
        1u32
    };
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        $crate::evolving!($ty { $($field),+ } added {});
    };
    ($ty:ident { $($field:ident),+ $(,)? } added { $($new:ident : $default:expr),* $(,)? }) => {
        impl bincode::Encode for $ty {
            fn encode<E: bincode::enc::Encoder>(&self, e: &mut E) -> Result<(), bincode::error::EncodeError> {
                let $ty { $($field,)+ $($new,)* } = self;
                let count = 0u32 $(+ $crate::evolving!(@one $field))+ $(+ $crate::evolving!(@one $new))*;
                bincode::Encode::encode(&count, e)?;
                $(bincode::Encode::encode($field, e)?;)+
                $(bincode::Encode::encode($new, e)?;)*
                Ok(())
            }
        }

        impl<Ctx> bincode::Decode<Ctx> for $ty {
            #[allow(unused_mut, unused_variables, unused_assignments)]
            fn decode<D: bincode::de::Decoder<Context = Ctx>>(d: &mut D) -> Result<Self, bincode::error::DecodeError> {
                let count: u32 = bincode::Decode::decode(d)?;
                let base = 0u32 $(+ $crate::evolving!(@one $field))+;
                let known = base $(+ $crate::evolving!(@one $new))*;
                if count < base || count > known {
                    return Err(bincode::error::DecodeError::OtherString(format!(
                        "{} has {count} fields in this record, this build reads {base} to {known}{}",
                        stringify!($ty),
                        if count > known { " (written by a newer Horcrux)" } else { "" },
                    )));
                }
                $(let $field = bincode::Decode::decode(d)?;)+
                let mut left = count - base;
                $(
                    let $new = if left > 0 {
                        left -= 1;
                        bincode::Decode::decode(d)?
                    } else {
                        $default
                    };
                )*
                Ok($ty { $($field,)+ $($new,)* })
            }
        }

        bincode::impl_borrow_decode!($ty);
    };
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq)]
    struct V1 {
        a: u64,
        b: String,
    }
    crate::evolving!(V1 { a, b });

    #[derive(Debug, PartialEq)]
    struct V2 {
        a: u64,
        b: String,
        c: Vec<u32>,
        d: bool,
    }
    crate::evolving!(V2 { a, b } added { c: vec![7], d: true });

    fn enc<T: bincode::Encode>(v: &T) -> Vec<u8> {
        bincode::encode_to_vec(v, bincode::config::standard()).unwrap()
    }

    fn dec<T: bincode::Decode<()>>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
        bincode::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
    }

    /// A record written before fields were added reads with their defaults; one written
    /// with more fields than this build knows, or fewer than the base, is refused.
    #[test]
    fn fields_added_at_the_end_read_old_records() {
        let old = enc(&V1 { a: 5, b: "x".into() });
        assert_eq!(dec::<V2>(&old).unwrap(), V2 { a: 5, b: "x".into(), c: vec![7], d: true });
        let new = V2 { a: 1, b: "y".into(), c: vec![], d: false };
        assert_eq!(dec::<V2>(&enc(&new)).unwrap(), new);
        let err = dec::<V1>(&enc(&new)).unwrap_err().to_string();
        assert!(err.contains("V1 has 4 fields") && err.contains("newer Horcrux"), "{err}");
        let mut short = enc(&V1 { a: 5, b: "x".into() });
        short[0] = 1;
        assert!(dec::<V1>(&short).unwrap_err().to_string().contains("V1 has 1 fields"));
    }
}
