# Boot sector for the KVM probe (see kvm_probe.rs): real mode -> long mode -> writes "K\n"
# to the debug port 0xe9. Rebuild: as --32 -o p.o kvm_probe.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o p.bin p.o
.code16
.globl _start
_start:
  cli
  xor %ax,%ax
  mov %ax,%ds
  mov %ax,%es
  mov %ax,%ss
  mov $0x7c00,%sp
  mov $0x1000,%di
  mov $0xC00,%cx
  xor %eax,%eax
  cld
  rep stosl
  movl $0x2003, 0x1000
  movl $0x3003, 0x2000
  movl $0x83, 0x3000
  mov %cr4,%eax
  or $0x20,%eax
  mov %eax,%cr4
  mov $0x1000,%eax
  mov %eax,%cr3
  mov $0xC0000080,%ecx
  rdmsr
  or $0x100,%eax
  wrmsr
  mov %cr0,%eax
  or $0x80000001,%eax
  mov %eax,%cr0
  lgdtl gdtr
  ljmp $0x08,$lm
.code64
lm:
  mov $0x100000, %rsp
  mov $0x4b, %al
  out %al, $0xe9
  mov $0x0a, %al
  out %al, $0xe9
1: hlt
  jmp 1b
.align 8
gdt:
  .quad 0
  .quad 0x00209A0000000000
gdtr:
  .word gdtr - gdt - 1
  .long gdt
.org 510
  .byte 0x55, 0xaa
