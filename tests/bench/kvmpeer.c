/*
 * kvmpeer: the smallest KVM virtual machine monitor that runs ferrovisor's
 * `bench` test guest, for the peer comparison of `cargo xtask bench`
 * (xtask/src/kvmpeer.rs builds it with `gcc -static -O2` and puts it in an
 * initramfs next to the kvm modules of the same kernel).
 *
 *   kvmpeer <guest ELF64> [command line]
 *
 * One VM, one vCPU, one memory slot of 16 MiB at guest-physical 0, no
 * in-kernel irqchip. The guest starts in the state ferrovisor gives an
 * `elf64` guest: 64-bit long mode, identity map of 0..4 GiB with 2 MiB pages
 * (PML4 0x1000, PDPT 0x2000, PDs 0x3000..0x6fff), GDT at 0x7000 (0x08 64-bit
 * code, 0x10 data), RIP = the ELF entry, RSP = 0x80000, RDI = 0x8000 (the
 * NUL-terminated command line), RSI = the RAM size, interrupts off.
 *
 * Served here, in user space (each one a KVM_RUN return):
 *   OUT 0x3f8        a console byte; whole lines go to stdout as `[<name>] line`
 *   IN  0x3fd        UART line status: 0x60 (transmitter empty)
 *   OUT 0xf4         ends the guest with that byte as its exit code
 *   other ports      reads all-ones, writes dropped
 *   MMIO             reads 0 (0x00050014 for the local APIC version register
 *                    at 0xfee00030), writes dropped
 *   HLT              ends the guest
 * CPUID, RDMSR and VMCALL never leave the kernel.
 *
 * Exit status: the guest's exit code, or 100 + a reason when the monitor
 * itself failed (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RAM_SIZE (16u << 20)
#define PML4 0x1000u
#define PDPT 0x2000u
#define PD0 0x3000u
#define GDT 0x7000u
#define CMDLINE 0x8000u
#define CMDLINE_MAX 0x1000u
#define STACK_TOP 0x80000u
#define LOAD_MIN 0x10000u

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define DEBUG_EXIT 0xf4
#define LAPIC_VERSION 0xfee00030ull

static const char *name = "kvm-bench";

static void die(int code, const char *what)
{
	fprintf(stderr, "kvmpeer: %s: %s\n", what, strerror(errno));
	exit(100 + code);
}

static void fail(int code, const char *what)
{
	fprintf(stderr, "kvmpeer: %s\n", what);
	exit(100 + code);
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint16_t rd16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

/* Reads a whole file into memory. */
static uint8_t *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die(1, path);
	uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf)
		fail(1, "out of memory");
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, st.st_size - got);
		if (n <= 0)
			die(1, path);
		got += n;
	}
	close(fd);
	*len = got;
	return buf;
}

/* Copies the PT_LOAD segments of an ELF64 x86-64 image to their physical
 * addresses; returns the entry point. */
static uint64_t load_elf(uint8_t *ram, const uint8_t *img, size_t len)
{
	if (len < 64 || memcmp(img, "\x7f" "ELF", 4) || img[4] != 2 || img[5] != 1 ||
	    rd16(img + 18) != 62)
		fail(2, "the guest image is not a little-endian ELF64 x86-64 file");
	uint64_t phoff = rd64(img + 32);
	uint16_t phentsize = rd16(img + 54), phnum = rd16(img + 56);
	if (phentsize < 56 || phoff > len || (uint64_t)phnum * phentsize > len - phoff)
		fail(2, "bad ELF program headers");
	int loaded = 0;
	for (unsigned i = 0; i < phnum; i++) {
		const uint8_t *ph = img + phoff + (uint64_t)i * phentsize;
		if (rd32(ph) != 1 /* PT_LOAD */)
			continue;
		uint64_t off = rd64(ph + 8), paddr = rd64(ph + 24);
		uint64_t filesz = rd64(ph + 32), memsz = rd64(ph + 40);
		if (filesz > memsz || off > len || filesz > len - off || paddr < LOAD_MIN ||
		    paddr > RAM_SIZE || memsz > RAM_SIZE - paddr)
			fail(2, "an ELF segment lies outside the guest's RAM or the file");
		memcpy(ram + paddr, img + off, filesz);
		memset(ram + paddr + filesz, 0, memsz - filesz);
		loaded++;
	}
	if (!loaded)
		fail(2, "the ELF image has no PT_LOAD segment");
	return rd64(img + 24);
}

/* Identity map of 0..4 GiB with 2 MiB pages, and the GDT. */
static void build_tables(uint8_t *ram)
{
	uint64_t e = PDPT | 3;
	memcpy(ram + PML4, &e, 8);
	for (uint64_t i = 0; i < 4; i++) {
		e = (PD0 + i * 0x1000) | 3;
		memcpy(ram + PDPT + i * 8, &e, 8);
		for (uint64_t j = 0; j < 512; j++) {
			e = (i << 30) | (j << 21) | 0x83; /* present, writable, 2 MiB */
			memcpy(ram + PD0 + i * 0x1000 + j * 8, &e, 8);
		}
	}
	uint64_t gdt[3] = {0, 0x00AF9B000000FFFFull, 0x00CF93000000FFFFull};
	memcpy(ram + GDT, gdt, sizeof gdt);
}

static void set_cpuid(int kvm, int vcpu)
{
	for (int n = 64;; n *= 2) {
		struct kvm_cpuid2 *c =
			calloc(1, sizeof *c + n * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			fail(3, "out of memory");
		c->nent = n;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) < 0) {
			free(c);
			if (errno == E2BIG && n < 4096)
				continue;
			die(3, "KVM_GET_SUPPORTED_CPUID");
		}
		if (ioctl(vcpu, KVM_SET_CPUID2, c) < 0)
			die(3, "KVM_SET_CPUID2");
		free(c);
		return;
	}
}

static void set_state(int vcpu, uint64_t entry)
{
	struct kvm_sregs s;
	if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0)
		die(4, "KVM_GET_SREGS");
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
		.present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment data = code;
	data.selector = 0x10;
	data.type = 3;
	data.db = 1;
	data.l = 0;
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.gdt.base = GDT;
	s.gdt.limit = 3 * 8 - 1;
	s.idt.base = 0;
	s.idt.limit = 0;
	s.cr0 = 0x80000031; /* PG | NE | ET | PE */
	s.cr3 = PML4;
	s.cr4 = 0x20;	     /* PAE */
	s.efer = 0x500;	     /* LMA | LME */
	if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0)
		die(4, "KVM_SET_SREGS");
	struct kvm_regs r;
	memset(&r, 0, sizeof r);
	r.rip = entry;
	r.rsp = STACK_TOP;
	r.rdi = CMDLINE;
	r.rsi = RAM_SIZE;
	r.rflags = 2;
	if (ioctl(vcpu, KVM_SET_REGS, &r) < 0)
		die(4, "KVM_SET_REGS");
}

static char line[512];
static size_t line_len;

static void console_byte(uint8_t b)
{
	if (b == '\n' || line_len == sizeof line - 1) {
		line[line_len] = 0;
		printf("[%s] %s\n", name, line);
		fflush(stdout);
		line_len = 0;
		if (b == '\n')
			return;
	}
	if (b != '\r')
		line[line_len++] = (char)b;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: kvmpeer <guest.elf> [command line] [console name]\n");
		return 100;
	}
	const char *cmdline = argc > 2 ? argv[2] : "";
	if (argc > 3)
		name = argv[3];
	if (strlen(cmdline) >= CMDLINE_MAX)
		fail(0, "command line too long");

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die(5, "/dev/kvm");
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		fprintf(stderr, "kvmpeer: KVM API version %d, expected %d\n", api, KVM_API_VERSION);
		return 105;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die(5, "KVM_CREATE_VM");

	uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die(6, "mmap of the guest RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .flags = 0, .guest_phys_addr = 0,
		.memory_size = RAM_SIZE, .userspace_addr = (uint64_t)(uintptr_t)ram,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die(6, "KVM_SET_USER_MEMORY_REGION");

	size_t img_len;
	uint8_t *img = slurp(argv[1], &img_len);
	uint64_t entry = load_elf(ram, img, img_len);
	free(img);
	build_tables(ram);
	memcpy(ram + CMDLINE, cmdline, strlen(cmdline) + 1);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die(7, "KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die(7, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die(7, "mmap of kvm_run");
	set_cpuid(kvm, vcpu);
	set_state(vcpu, entry);
	fprintf(stderr, "kvmpeer: %s: entry %#llx, %u MiB, command line \"%s\"\n", argv[1],
		(unsigned long long)entry, RAM_SIZE >> 20, cmdline);

	unsigned long long io_exits = 0, mmio_exits = 0;
	int code = -1;
	while (code < 0) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die(8, "KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			io_exits++;
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
				uint16_t port = run->io.port;
				if (run->io.direction == KVM_EXIT_IO_OUT) {
					if (port == COM1)
						console_byte(data[0]);
					else if (port == DEBUG_EXIT)
						code = data[0];
				} else if (port == COM1_LSR) {
					memset(data, 0, run->io.size);
					data[0] = 0x60;
				} else {
					memset(data, 0xff, run->io.size);
				}
			}
			break;
		}
		case KVM_EXIT_MMIO:
			mmio_exits++;
			if (!run->mmio.is_write) {
				uint64_t v = run->mmio.phys_addr == LAPIC_VERSION ? 0x50014 : 0;
				memset(run->mmio.data, 0, sizeof run->mmio.data);
				memcpy(run->mmio.data, &v,
				       run->mmio.len < 8 ? run->mmio.len : 8);
			}
			break;
		case KVM_EXIT_HLT:
			fprintf(stderr, "kvmpeer: the guest halted\n");
			code = 0x100;
			break;
		case KVM_EXIT_SHUTDOWN:
			fprintf(stderr, "kvmpeer: the guest shut down (triple fault)\n");
			return 109;
		case KVM_EXIT_FAIL_ENTRY:
			fprintf(stderr, "kvmpeer: VM entry failed, hardware reason %#llx\n",
				(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			return 109;
		case KVM_EXIT_INTERNAL_ERROR:
			fprintf(stderr, "kvmpeer: KVM internal error, suberror %u\n",
				run->internal.suberror);
			return 109;
		default:
			fprintf(stderr, "kvmpeer: unexpected exit reason %u\n", run->exit_reason);
			return 109;
		}
	}
	if (line_len)
		console_byte('\n');
	fprintf(stderr, "kvmpeer: guest %s, %llu I/O and %llu MMIO exits to user space\n",
		code == 0x100 ? "halted" : "exited", io_exits, mmio_exits);
	if (code == 0x100)
		return 0;
	printf("kvmpeer: exit code %d\n", code);
	return code;
}
