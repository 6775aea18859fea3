# fuzz/fuzz.mk -- libFuzzer harnesses (included from Makefile.am).
#
#   make fuzz                    build the harnesses and run each for
#                                FUZZ_SECONDS (default 60) seconds
#   make fuzz-build              build them only (fuzz/build/fuzz_*)
#   make fuzz-clean              remove fuzz/build
#   make fuzz FUZZ_SECONDS=600   ten minutes each
#
# The harnesses and the library SOURCES are compiled directly with clang
# (-fsanitize=fuzzer,address,undefined; the library with fuzzer-no-link so
# libFuzzer sees its coverage), independently of ./configure's compiler.
# New inputs found are written to fuzz/build/corpus/<harness>/ (the seed
# corpus in fuzz/corpus/<harness>/ is only read); crash files to
# fuzz/build/.  Needs clang with libFuzzer and libomp (Debian:
# clang libclang-rt-14-dev libomp-14-dev) and OpenBLAS.  clang < 15 has no
# _Float16 on x86: the f16 reads are then compiled with clang's __fp16 and
# its conversion helpers linked from compiler-rt.

FUZZ_CC = clang
FUZZ_SECONDS = 60
FUZZ_HARNESSES = fuzz_graph fuzz_npy fuzz_args
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS = -g -O1 -std=gnu11 -fopenmp -Wno-pass-failed $(FUZZ_SAN) $(OPENBLAS_CFLAGS) \
	-include $(abs_top_builddir)/config.h -I$(abs_top_builddir) -I$(abs_top_srcdir)/include \
	-I$(abs_top_srcdir)/lib -I$(abs_top_srcdir)/backends -I$(abs_top_srcdir)/tools/mel \
	-I$(abs_top_srcdir)/fuzz
FUZZ_LIBS = $(OPENBLAS_LIBS) -lopenblas -lm
# the library's own source list, so new files are picked up
FUZZ_LIBSRC = $(filter %.c,$(lib_libmel_la_SOURCES)) tools/mel/npy.c

EXTRA_DIST += fuzz/fuzz.mk fuzz/fuzz_common.h fuzz/fuzz_graph.c fuzz/fuzz_npy.c fuzz/seeds.py \
	fuzz/fuzz_args.c fuzz/corpus

.PHONY: fuzz fuzz-build fuzz-check-tools fuzz-clean
fuzz-check-tools:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || { \
	  echo "make fuzz: '$(FUZZ_CC)' not found; install clang (Debian: apt-get install clang libclang-rt-14-dev libomp-14-dev) or set FUZZ_CC" >&2; exit 1; }
	@mkdir -p fuzz/build && printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >fuzz/build/probe.c && \
	$(FUZZ_CC) -fsanitize=fuzzer -fopenmp fuzz/build/probe.c -o fuzz/build/probe >fuzz/build/probe.log 2>&1 || { \
	  echo "make fuzz: $(FUZZ_CC) cannot link -fsanitize=fuzzer -fopenmp (libFuzzer or libomp missing; Debian: apt-get install libclang-rt-14-dev libomp-14-dev). See fuzz/build/probe.log" >&2; exit 1; }

fuzz-build: fuzz-check-tools
	@mkdir -p fuzz/build/lib
	@set -e; objs=; f16=; rt=; \
	printf '_Float16 x;\n' >fuzz/build/f16.c; \
	$(FUZZ_CC) -c fuzz/build/f16.c -o fuzz/build/f16.o 2>/dev/null || { \
	  f16=-D_Float16=__fp16; rt=`$(FUZZ_CC) --rtlib=compiler-rt -print-libgcc-file-name`; }; \
	for src in $(FUZZ_LIBSRC); do \
	  obj=fuzz/build/lib/`echo $$src | tr / _ | sed 's/\.c$$/.o/'`; \
	  echo "  FUZZCC   $$src"; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) $$f16 -fsanitize=fuzzer-no-link -c $(abs_top_srcdir)/$$src -o $$obj; \
	  objs="$$objs $$obj"; done; \
	for h in $(FUZZ_HARNESSES); do \
	  echo "  FUZZLD   fuzz/build/$$h"; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(abs_top_srcdir)/fuzz/$$h.c $$objs \
	    $(FUZZ_LIBS) $$rt -o fuzz/build/$$h; done

fuzz: fuzz-build
	@set -e; for h in $(FUZZ_HARNESSES); do \
	  mkdir -p fuzz/build/corpus/$$h; \
	  echo "make fuzz: $$h for $(FUZZ_SECONDS) s (log fuzz/build/$$h.log)"; \
	  ASAN_OPTIONS=detect_leaks=1 OMP_NUM_THREADS=1 ./fuzz/build/$$h -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=4096 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
	    -artifact_prefix=fuzz/build/$$h- \
	    fuzz/build/corpus/$$h $(abs_top_srcdir)/fuzz/corpus/$$h >fuzz/build/$$h.log 2>&1 || { \
	    tail -40 fuzz/build/$$h.log; echo "make fuzz: $$h FOUND A PROBLEM: see fuzz/build/$$h.log and fuzz/build/$$h-*" >&2; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' fuzz/build/$$h.log | tail -2; \
	done; echo "make fuzz: no findings"

fuzz-clean:
	rm -rf fuzz/build
