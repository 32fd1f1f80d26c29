/*
 * realmode: a 16-bit real-mode guest loaded and entered at linear 0x7C00
 * (CS:IP = 0000:7C00 from the hypervisor, or from a BIOS as a boot sector).
 *
 * Prints on the 16550 at 0x3F8:
 *
 *   realmode: hello from 16-bit real mode
 *   realmode: far return to segment 07c0 ok
 *   realmode: 0000:0600 = 0050:0100 = 0060:0000
 *   realmode: sum 1..100 = 5050
 *   realmode: PASS
 *
 * then writes 0 to the debug-exit port 0xF4 (1 and `realmode: FAIL: <why>`
 * after a failed check).
 *
 * Every address is a difference of two labels in this section, so nothing
 * needs a relocation: the code is linked at 1 MiB (the guests' link.ld) but
 * runs at 0x7C00 with CS = DS = 0x07C0. AT&T syntax.
 */

    .set COM1, 0x3f8
    .set COM1_LSR, COM1 + 5
    .set LSR_THR_EMPTY, 0x20
    .set DEBUG_EXIT, 0xf4

    .set LOAD_SEGMENT, 0x07c0       /* 0x07C0 * 16 = 0x7C00 */
    .set STACK_TOP, 0x7000
    .set COPY_SEGMENT, 0x0800       /* rep movsb target: linear 0x8000 */

    .macro PRINT msg
    mov $(\msg - _start), %si
    call puts
    .endm

    .macro FAIL why
    mov $(\why - _start), %si
    jmp fail
    .endm

    .section .text._start, "ax"
    .code16

    .globl _start
_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ss
    mov $STACK_TOP, %sp
    /* CS:IP is 0000:7C00 (or any alias of it): make it 07C0:<offset>. */
    pushw $LOAD_SEGMENT
    pushw $(.Lnormalised - _start)
    lretw
.Lnormalised:
    mov %cs, %ax
    mov %ax, %ds
    PRINT msg_hello

    mov %cs, %ax
    cmp $LOAD_SEGMENT, %ax
    je .Lcs_ok
    FAIL why_cs
.Lcs_ok:
    call .Lhere
.Lhere:
    pop %ax                         /* IP of .Lhere */
    sub $(.Lhere - .Lnormalised), %ax
    cmp $(.Lnormalised - _start), %ax
    je .Lip_ok
    FAIL why_ip
.Lip_ok:
    PRINT msg_csip

    /* One linear address, three segment:offset pairs. */
    xor %ax, %ax
    mov %ax, %es
    movw $0xbeef, %es:0x0600
    mov $0x0050, %ax
    mov %ax, %es
    cmpw $0xbeef, %es:0x0100
    je .Lalias1_ok
    FAIL why_alias
.Lalias1_ok:
    mov $0x0060, %ax
    mov %ax, %es
    movw $0x1234, %es:0x0000
    xor %ax, %ax
    mov %ax, %es
    cmpw $0x1234, %es:0x0600
    je .Lalias2_ok
    FAIL why_alias
.Lalias2_ok:
    PRINT msg_alias

    /* A counted loop: 100 + 99 + ... + 1. */
    xor %ax, %ax
    mov $100, %cx
.Lsum:
    add %cx, %ax
    loop .Lsum
    cmp $5050, %ax
    je .Lsum_ok
    FAIL why_sum
.Lsum_ok:
    PRINT msg_sum
    call put_dec16
    call newline

    /* Copy the PASS line to COPY_SEGMENT:0 and print it from there. */
    mov $COPY_SEGMENT, %ax
    mov %ax, %es
    xor %di, %di
    mov $(msg_pass - _start), %si
    mov $(msg_pass_end - msg_pass), %cx
    rep movsb
    push %ds
    mov %es, %ax
    mov %ax, %ds
    xor %si, %si
    call puts
    pop %ds

    xor %al, %al
    outb %al, $DEBUG_EXIT
    jmp halt

/* %si = why (offset in this segment): prints `realmode: FAIL: <why>`, exits 1. */
fail:
    push %si
    PRINT msg_fail
    pop %si
    call puts
    call newline
    mov $1, %al
    outb %al, $DEBUG_EXIT
halt:
    cli
    hlt
    jmp halt

/* Writes %al to COM1, waiting (boundedly) for the transmitter. Keeps registers. */
putc:
    push %ax
    push %cx
    push %dx
    mov %al, %ah
    mov $0xffff, %cx
    mov $COM1_LSR, %dx
.Lputc_wait:
    inb %dx, %al
    test $LSR_THR_EMPTY, %al
    jnz .Lputc_ready
    loop .Lputc_wait
.Lputc_ready:
    mov %ah, %al
    mov $COM1, %dx
    outb %al, %dx
    pop %dx
    pop %cx
    pop %ax
    ret

/* Writes the NUL-terminated string at %ds:%si. Keeps registers. */
puts:
    push %ax
    push %si
.Lputs_next:
    lodsb
    test %al, %al
    jz .Lputs_done
    call putc
    jmp .Lputs_next
.Lputs_done:
    pop %si
    pop %ax
    ret

newline:
    push %ax
    mov $0x0a, %al
    call putc
    pop %ax
    ret

/* Writes %ax in decimal. Keeps registers. */
put_dec16:
    push %ax
    push %bx
    push %cx
    push %dx
    mov $10, %bx
    xor %cx, %cx
.Lput_dec_divide:
    xor %dx, %dx
    div %bx
    push %dx
    inc %cx
    test %ax, %ax
    jnz .Lput_dec_divide
.Lput_dec_print:
    pop %ax
    add $0x30, %al                  /* '0' */
    call putc
    loop .Lput_dec_print
    pop %dx
    pop %cx
    pop %bx
    pop %ax
    ret

msg_hello:  .asciz "realmode: hello from 16-bit real mode\n"
msg_csip:   .asciz "realmode: far return to segment 07c0 ok\n"
msg_alias:  .asciz "realmode: 0000:0600 = 0050:0100 = 0060:0000\n"
msg_sum:    .asciz "realmode: sum 1..100 = "
msg_pass:   .asciz "realmode: PASS\n"
msg_pass_end:
msg_fail:   .asciz "realmode: FAIL: "
why_cs:     .asciz "cs"
why_ip:     .asciz "ip"
why_alias:  .asciz "segment aliases"
why_sum:    .asciz "loop sum"

/* A BIOS boot sector signature: the image also boots from a disk. Code and
   strings must fit in the 510 bytes before it (the assembler refuses more). */
    .org 510
    .byte 0x55, 0xaa
