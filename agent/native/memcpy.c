/*
 * memcpy for the static x86_64 build (musl), which the linker puts in place of musl's own
 * (`--wrap=memcpy`, agent/build.rs). Why: musl's x86_64 memcpy is `rep movsq` from 8 bytes
 * up, with byte loops around it, and a `rep` costs tens of cycles to start whatever it
 * copies. Rust's code calls memcpy for most moves of values larger than a few words: a
 * proxied request makes about 87 such calls (callgrind), and musl's `rep movsq` was 9 % of
 * the static proxy's CPU samples (perf); glibc's memcpy copies such sizes with a few vector
 * moves. No crate offers a libc memcpy for a static binary, hence this file.
 *
 * SSE2 only, which every x86_64 has. Small sizes are copied with two overlapping loads and
 * stores, medium ones 16 bytes at a time with an overlapping last block, large ones with
 * `rep movsq` (its start-up is small beside a copy that long) and the last 16 bytes.
 * Built with -ffreestanding -fno-tree-loop-distribute-patterns so that the compiler cannot
 * turn a loop here back into a call to memcpy. Checked against a byte loop for every size to
 * 1,100 and every alignment of both pointers in agent/src/memcpy.rs.
 */
#include <emmintrin.h>
#include <stddef.h>
#include <stdint.h>

static inline void copy16(unsigned char *d, const unsigned char *s)
{
	_mm_storeu_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
}

/* n bytes, n from sizeof(type) to twice that: the first and the last sizeof(type) of them,
 * which overlap when n is less than twice. */
#define COPY_ENDS(type)                                          \
	do {                                                     \
		type first, last;                                \
		__builtin_memcpy(&first, s, sizeof first);       \
		__builtin_memcpy(&last, s + n - sizeof last, sizeof last); \
		__builtin_memcpy(d, &first, sizeof first);       \
		__builtin_memcpy(d + n - sizeof last, &last, sizeof last); \
	} while (0)

void *berth_memcpy(void *restrict dst, const void *restrict src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	if (n <= 16) {
		if (n >= 8)
			COPY_ENDS(uint64_t);
		else if (n >= 4)
			COPY_ENDS(uint32_t);
		else if (n >= 2)
			COPY_ENDS(uint16_t);
		else if (n == 1)
			*d = *s;
		return dst;
	}
	/* From here on, the last 16 bytes are copied apart, covering whatever the steps before
	 * left over (memcpy's buffers never overlap, so the order does not matter). */
	if (n <= 32) {
		copy16(d, s);
	} else if (n <= 256) {
		for (size_t i = 0; i + 16 < n; i += 16)
			copy16(d + i, s + i);
	} else {
		size_t words = n / 8;
		__asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(words) : : "memory");
	}
	copy16((unsigned char *)dst + n - 16, (const unsigned char *)src + n - 16);
	return dst;
}

#ifdef BERTH_WRAP_MEMCPY
void *__wrap_memcpy(void *restrict dst, const void *restrict src, size_t n)
	__attribute__((alias("berth_memcpy")));
#endif
