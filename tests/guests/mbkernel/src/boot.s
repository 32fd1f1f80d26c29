/*
 * mbkernel: a Multiboot (v1, spec 0.6.96) kernel in 32-bit protected mode.
 *
 * Entered with paging off, flat segments, EAX = 0x2BADB002, EBX = the
 * information structure. Prints on the 16550 at 0x3F8:
 *
 *   mbkernel: magic ok
 *   mbkernel: loaded at 0x........
 *   mbkernel: flags 0x........
 *   mbkernel: mem_lower <n> KiB mem_upper <m> KiB
 *   mbkernel: cmdline <cmdline>
 *   mbkernel: mmap base 0x... len 0x... type <t>      (one line an entry)
 *   mbkernel: mmap <k> entries
 *   mbkernel: loader <name>
 *   mbkernel: bda com1 0x... base <n> KiB ebda 0x... <k> KiB
 *   mbkernel: fw_cfg cpus <n> ram <m> KiB    (or: mbkernel: fw_cfg absent)
 *   mbkernel: PASS
 *
 * and writes 0 to the debug-exit port 0xF4; on a failed check it prints
 * `mbkernel: FAIL: <why>` and writes 1 instead.
 *
 * The BIOS data area must agree with the information structure: COM1's
 * base at 0x400 is the port this kernel prints to, the base memory size
 * at 0x413 is mem_lower, the EBDA (segment at 0x40E) starts right there,
 * its first word (its size in KiB) keeps it below 640 KiB, and no RAM
 * entry of the memory map overlaps it.
 *
 * AT&T syntax. Everything (header, code, strings) lives in .text._start,
 * which the guests' link.ld places first, at __image_start (1 MiB, or
 * what the crate's build script sets, e.g. 0x8000 for `mblow`): the flat
 * image starts with the header.
 */

    .set COM1, 0x3f8
    .set COM1_LSR, COM1 + 5
    .set LSR_THR_EMPTY, 0x20
    .set DEBUG_EXIT, 0xf4
    .set FW_CFG_SEL, 0x510
    .set FW_CFG_DATA, 0x511

    .set MB_HEADER_MAGIC, 0x1badb002
    /* bit 0: page-align modules, bit 1: memory information, bit 16: a.out kludge */
    .set MB_HEADER_FLAGS, 0x00010003
    .set MB_BOOT_MAGIC, 0x2badb002

    /* information structure: offsets and flag bits */
    .set MBI_FLAGS, 0
    .set MBI_MEM_LOWER, 4
    .set MBI_MEM_UPPER, 8
    .set MBI_CMDLINE, 16
    .set MBI_MMAP_LENGTH, 44
    .set MBI_MMAP_ADDR, 48
    .set MBI_LOADER_NAME, 64
    .set MBI_F_MEMORY, 1 << 0
    .set MBI_F_CMDLINE, 1 << 2
    .set MBI_F_MMAP, 1 << 6
    .set MBI_F_LOADER_NAME, 1 << 9

    /* where this kernel is loaded (link.ld): the memory map must call it RAM */
    .set KERNEL_BASE, __image_start

    /* BIOS data area */
    .set BDA_COM1, 0x400
    .set BDA_EBDA_SEG, 0x40e
    .set BDA_BASE_KIB, 0x413
    /* a memory map longer than this is taken as garbage */
    .set MMAP_MAX_ENTRIES, 128

    .macro PRINT msg
    push %esi
    mov $\msg, %esi
    call puts
    pop %esi
    .endm

    .macro FAIL msg
    mov $\msg, %esi
    jmp fail
    .endm

    .section .text._start, "ax"
    .code32

/* The Multiboot header: 4-byte aligned, at file offset 0. */
    .balign 4
mb_header:
    .long MB_HEADER_MAGIC
    .long MB_HEADER_FLAGS
    .long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)
    .long mb_header             /* header_addr */
    .long mb_header             /* load_addr: the file is loaded from its start */
    .long mb_load_end           /* load_end_addr */
    .long __bss_end             /* bss_end_addr (link.ld): zeroed by the loader */
    .long _start                /* entry_addr */

    .globl _start
_start:
    cli
    cld
    mov $mb_stack_top, %esp
    mov %ebx, %ebp              /* %ebp = information structure from here on */

    cmp $MB_BOOT_MAGIC, %eax
    je .Lmagic_ok
    mov %eax, %ebx
    PRINT msg_bad_magic
    mov %ebx, %eax
    call put_hex
    call newline
    FAIL why_magic
.Lmagic_ok:
    PRINT msg_magic_ok
    PRINT msg_loaded_at
    mov $mb_header, %eax
    call put_hex
    call newline

    PRINT msg_flags
    mov MBI_FLAGS(%ebp), %eax
    call put_hex
    call newline

    /* mem_lower / mem_upper */
    testl $MBI_F_MEMORY, MBI_FLAGS(%ebp)
    jnz .Lhave_memory
    FAIL why_no_memory
.Lhave_memory:
    PRINT msg_mem_lower
    mov MBI_MEM_LOWER(%ebp), %eax
    call put_dec
    PRINT msg_mem_upper
    mov MBI_MEM_UPPER(%ebp), %eax
    call put_dec
    PRINT msg_kib
    cmpl $640, MBI_MEM_LOWER(%ebp)
    jbe .Lmem_lower_ok
    FAIL why_mem_lower
.Lmem_lower_ok:
    cmpl $0, MBI_MEM_UPPER(%ebp)
    jne .Lmem_upper_ok
    FAIL why_mem_upper
.Lmem_upper_ok:

    /* command line */
    testl $MBI_F_CMDLINE, MBI_FLAGS(%ebp)
    jnz .Lhave_cmdline
    FAIL why_no_cmdline
.Lhave_cmdline:
    PRINT msg_cmdline
    push %esi
    mov MBI_CMDLINE(%ebp), %esi
    call puts
    pop %esi
    call newline

    /* memory map: entries of `size` (u32, not counting itself), base (u64),
       length (u64), type (u32) */
    testl $MBI_F_MMAP, MBI_FLAGS(%ebp)
    jnz .Lhave_mmap
    FAIL why_no_mmap
.Lhave_mmap:
    mov MBI_MMAP_ADDR(%ebp), %esi
    mov MBI_MMAP_LENGTH(%ebp), %edi
    add %esi, %edi              /* %edi = end of the map */
    xor %ebx, %ebx              /* %ebx = entries seen */
    xor %edx, %edx              /* %edx = 1 once RAM holding KERNEL_BASE is seen */
.Lmmap_next:
    cmp %edi, %esi
    jae .Lmmap_done
    cmp $MMAP_MAX_ENTRIES, %ebx
    jb .Lmmap_entry
    FAIL why_mmap_long
.Lmmap_entry:
    PRINT msg_mmap_base
    mov 8(%esi), %eax
    call put_hex
    mov 4(%esi), %eax
    call put_hex
    PRINT msg_mmap_len
    mov 16(%esi), %eax
    call put_hex
    mov 12(%esi), %eax
    call put_hex
    PRINT msg_mmap_type
    mov 20(%esi), %eax
    call put_dec
    call newline

    /* available RAM (type 1) with base <= KERNEL_BASE < base + length? */
    cmpl $1, 20(%esi)
    jne .Lmmap_advance
    cmpl $0, 8(%esi)
    jne .Lmmap_advance
    mov 4(%esi), %eax
    cmp $KERNEL_BASE, %eax
    ja .Lmmap_advance
    cmpl $0, 16(%esi)
    jne .Lmmap_kernel_ram
    add 12(%esi), %eax
    jc .Lmmap_kernel_ram
    cmp $KERNEL_BASE, %eax
    jbe .Lmmap_advance
.Lmmap_kernel_ram:
    mov $1, %edx
.Lmmap_advance:
    inc %ebx
    mov (%esi), %eax
    lea 4(%esi,%eax), %esi
    jmp .Lmmap_next
.Lmmap_done:
    PRINT msg_mmap_count
    mov %ebx, %eax
    call put_dec
    PRINT msg_entries
    test %ebx, %ebx
    jnz .Lmmap_not_empty
    FAIL why_mmap_empty
.Lmmap_not_empty:
    test %edx, %edx
    jnz .Lmmap_kernel_ok
    FAIL why_mmap_kernel
.Lmmap_kernel_ok:

    /* boot loader name */
    testl $MBI_F_LOADER_NAME, MBI_FLAGS(%ebp)
    jnz .Lhave_loader
    FAIL why_no_loader
.Lhave_loader:
    PRINT msg_loader
    push %esi
    mov MBI_LOADER_NAME(%ebp), %esi
    call puts
    pop %esi
    call newline

    /* BIOS data area against the information structure */
    PRINT msg_bda_com1
    movzwl BDA_COM1, %eax
    call put_hex
    PRINT msg_bda_base
    movzwl BDA_BASE_KIB, %eax
    call put_dec
    PRINT msg_bda_ebda
    movzwl BDA_EBDA_SEG, %ebx
    shl $4, %ebx                /* %ebx = EBDA address */
    mov %ebx, %eax
    call put_hex
    PRINT msg_space
    xor %eax, %eax
    test %ebx, %ebx
    jz .Lbda_no_ebda_size
    movzwl (%ebx), %eax         /* %eax = EBDA size in KiB */
.Lbda_no_ebda_size:
    call put_dec
    PRINT msg_kib
    cmpw $COM1, BDA_COM1
    je .Lbda_com1_ok
    FAIL why_bda_com1
.Lbda_com1_ok:
    movzwl BDA_BASE_KIB, %eax
    cmp MBI_MEM_LOWER(%ebp), %eax
    je .Lbda_base_ok
    FAIL why_bda_base
.Lbda_base_ok:
    shl $10, %eax
    cmp %eax, %ebx
    je .Lbda_ebda_ok
    FAIL why_bda_ebda
.Lbda_ebda_ok:
    movzwl (%ebx), %ecx
    test %ecx, %ecx
    jnz .Lbda_ebda_size
    FAIL why_bda_ebda_size
.Lbda_ebda_size:
    shl $10, %ecx
    add %ebx, %ecx              /* %ecx = end of the EBDA */
    cmp $0xa0000, %ecx
    jbe .Lbda_ebda_below_640k
    FAIL why_bda_ebda_size
.Lbda_ebda_below_640k:
    /* no RAM entry of the memory map overlaps [%ebx, %ecx) (entries
       above 4 GiB cannot) */
    mov MBI_MMAP_ADDR(%ebp), %esi
    mov MBI_MMAP_LENGTH(%ebp), %edi
    add %esi, %edi
.Lbda_mmap_next:
    cmp %edi, %esi
    jae .Lbda_mmap_done
    cmpl $1, 20(%esi)
    jne .Lbda_mmap_advance
    cmpl $0, 8(%esi)
    jne .Lbda_mmap_advance
    mov 4(%esi), %eax           /* entry base */
    cmp %ecx, %eax
    jae .Lbda_mmap_advance      /* starts at or after the EBDA's end */
    cmpl $0, 16(%esi)
    jne .Lbda_mmap_overlap      /* 4 GiB or longer from below the EBDA's end */
    add 12(%esi), %eax          /* entry end */
    jc .Lbda_mmap_overlap
    cmp %ebx, %eax
    jbe .Lbda_mmap_advance      /* ends at or before the EBDA */
.Lbda_mmap_overlap:
    FAIL why_bda_mmap
.Lbda_mmap_advance:
    mov (%esi), %eax
    lea 4(%esi,%eax), %esi
    jmp .Lbda_mmap_next
.Lbda_mmap_done:

    /* fw_cfg (QEMU docs/specs/fw_cfg.rst; QEMU and ferrovisor have it, a
       bare PC doesn't): the signature, then NB_CPUS (key 5, 16-bit LE) and
       RAM_SIZE (key 3, 64-bit LE; printed in KiB, below 4 TiB). */
    mov $FW_CFG_SEL, %dx
    xor %eax, %eax
    outw %ax, %dx
    call fw_cfg_dword
    cmp $0x554d4551, %eax       /* "QEMU", first byte lowest */
    je .Lfw_present
    PRINT msg_fw_absent
    jmp .Lfw_done
.Lfw_present:
    mov $FW_CFG_SEL, %dx
    mov $5, %ax
    outw %ax, %dx
    mov $FW_CFG_DATA, %dx
    xor %eax, %eax
    inb %dx, %al
    mov %al, %bl
    inb %dx, %al
    mov %al, %ah
    mov %bl, %al
    PRINT msg_fw_cpus
    call put_dec
    mov $FW_CFG_SEL, %dx
    mov $3, %ax
    outw %ax, %dx
    call fw_cfg_dword
    mov %eax, %ebx              /* low half */
    call fw_cfg_dword           /* high half */
    shrd $10, %eax, %ebx        /* KiB (below 4 TiB) */
    mov %ebx, %eax
    PRINT msg_fw_ram
    call put_dec
    PRINT msg_kib
.Lfw_done:

    PRINT msg_pass
    xor %eax, %eax
    outb %al, $DEBUG_EXIT
    jmp halt

/* %esi = why (a string): prints `mbkernel: FAIL: <why>` and exits 1. */
fail:
    push %esi
    PRINT msg_fail
    pop %esi
    call puts
    call newline
    mov $1, %al
    outb %al, $DEBUG_EXIT
halt:
    cli
    hlt
    jmp halt

/* Reads the next 4 bytes of the selected fw_cfg item into %eax (first byte
   lowest). Keeps the other registers. */
fw_cfg_dword:
    push %ecx
    push %edx
    mov $FW_CFG_DATA, %dx
    xor %eax, %eax
    mov $4, %ecx
.Lfw_dword:
    inb %dx, %al                /* bits 0..7 are 0 here: they rotate in from the top */
    ror $8, %eax
    loop .Lfw_dword
    pop %edx
    pop %ecx
    ret

/* Writes %al to COM1, waiting (boundedly) for the transmitter. Keeps all registers. */
putc:
    pushal
    mov %al, %bl
    mov $100000, %ecx
    mov $COM1_LSR, %dx
.Lputc_wait:
    inb %dx, %al
    test $LSR_THR_EMPTY, %al
    jnz .Lputc_ready
    dec %ecx
    jnz .Lputc_wait
.Lputc_ready:
    mov %bl, %al
    mov $COM1, %dx
    outb %al, %dx
    popal
    ret

/* Writes the NUL-terminated string at %esi. Keeps all registers. */
puts:
    pushal
.Lputs_next:
    lodsb
    test %al, %al
    jz .Lputs_done
    call putc
    jmp .Lputs_next
.Lputs_done:
    popal
    ret

newline:
    push %eax
    mov $0x0a, %al              /* newline */
    call putc
    pop %eax
    ret

/* Writes %eax in decimal. Keeps all registers. */
put_dec:
    pushal
    mov $10, %ebx
    xor %ecx, %ecx
.Lput_dec_divide:
    xor %edx, %edx
    div %ebx
    push %edx
    inc %ecx
    test %eax, %eax
    jnz .Lput_dec_divide
.Lput_dec_print:
    pop %eax
    add $0x30, %al             /* '0' */
    call putc
    loop .Lput_dec_print
    popal
    ret

/* Writes %eax as 8 hex digits. Keeps all registers. */
put_hex:
    pushal
    mov %eax, %ebx
    mov $8, %ecx
.Lput_hex_digit:
    rol $4, %ebx
    mov %bl, %al
    and $0xf, %al
    cmp $10, %al
    jb .Lput_hex_decimal
    add $(0x61 - 0x30 - 10), %al  /* 'a' - '0' - 10 */
.Lput_hex_decimal:
    add $0x30, %al             /* '0' */
    call putc
    loop .Lput_hex_digit
    popal
    ret

msg_magic_ok:   .asciz "mbkernel: magic ok\n"
msg_bad_magic:  .asciz "mbkernel: bad magic in EAX: 0x"
msg_flags:      .asciz "mbkernel: flags 0x"
msg_mem_lower:  .asciz "mbkernel: mem_lower "
msg_mem_upper:  .asciz " KiB mem_upper "
msg_kib:        .asciz " KiB\n"
msg_cmdline:    .asciz "mbkernel: cmdline "
msg_mmap_base:  .asciz "mbkernel: mmap base 0x"
msg_mmap_len:   .asciz " len 0x"
msg_mmap_type:  .asciz " type "
msg_mmap_count: .asciz "mbkernel: mmap "
msg_entries:    .asciz " entries\n"
msg_loader:     .asciz "mbkernel: loader "
msg_loaded_at:  .asciz "mbkernel: loaded at 0x"
msg_bda_com1:   .asciz "mbkernel: bda com1 0x"
msg_bda_base:   .asciz " base "
msg_bda_ebda:   .asciz " KiB ebda 0x"
msg_space:      .asciz " "
msg_fw_absent:  .asciz "mbkernel: fw_cfg absent\n"
msg_fw_cpus:    .asciz "mbkernel: fw_cfg cpus "
msg_fw_ram:     .asciz " ram "
msg_pass:       .asciz "mbkernel: PASS\n"
msg_fail:       .asciz "mbkernel: FAIL: "
why_magic:      .asciz "EAX is not 0x2BADB002"
why_no_memory:  .asciz "no memory information (flag 0)"
why_mem_lower:  .asciz "mem_lower above 640 KiB"
why_mem_upper:  .asciz "mem_upper is 0"
why_no_cmdline: .asciz "no command line (flag 2)"
why_no_mmap:    .asciz "no memory map (flag 6)"
why_mmap_long:  .asciz "memory map has too many entries"
why_mmap_empty: .asciz "memory map is empty"
why_mmap_kernel: .asciz "memory map has no RAM where this kernel is loaded"
why_no_loader:  .asciz "no boot loader name (flag 9)"
why_bda_com1:   .asciz "BDA 0x400: COM1 base is not 0x3F8"
why_bda_base:   .asciz "BDA 0x413: base memory size differs from mem_lower"
why_bda_ebda:   .asciz "BDA 0x40E: the EBDA does not start at the end of base memory"
why_bda_ebda_size: .asciz "EBDA: size word 0, or the EBDA reaches past 640 KiB"
why_bda_mmap:   .asciz "memory map: a RAM entry overlaps the EBDA"

    .balign 4
mb_load_end:

    .section .bss.mbkernel_stack, "aw", @nobits
    .balign 16
    .skip 8192
mb_stack_top:
