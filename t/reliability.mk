# Reliability tests (issue 6): huge shapes, threads and determinism, and the
# replay of the fuzzing corpora.  Included from Makefile.am.
check_PROGRAMS += t/huge.t
t_huge_t_SOURCES = t/huge.c
t_huge_t_LDADD = $(TEST_LIBS)
TESTS += t/huge.t

check_PROGRAMS += t/threads.t
t_threads_t_SOURCES = t/threads.c
t_threads_t_LDADD = $(TEST_LIBS) -lpthread
TESTS += t/threads.t

# Replays fuzz/corpus/* through the harness code (fuzz/*.c, included by
# t/fuzz_regress.c) and checks the fixes of past findings.
check_PROGRAMS += t/fuzz_regress.t
t_fuzz_regress_t_SOURCES = t/fuzz_regress.c
t_fuzz_regress_t_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/mel -I$(top_srcdir)/fuzz
t_fuzz_regress_t_LDADD = tools/mel/libnpy.la $(TEST_LIBS)
EXTRA_t_fuzz_regress_t_DEPENDENCIES = $(top_srcdir)/fuzz/fuzz_graph.c $(top_srcdir)/fuzz/fuzz_args.c \
	$(top_srcdir)/fuzz/fuzz_npy.c $(top_srcdir)/fuzz/fuzz_common.h
TESTS += t/fuzz_regress.t

# make valgrind: every compiled TAP test under valgrind's memcheck (leaks
# included); a test with an error or a definite/indirect leak fails.  The
# slow ones are skipped (VALGRIND_SKIP: huge shapes, the llama model, and
# the two long numerical tests ce and fixtures, and threads, whose 4
# pthreads valgrind runs one at a time: ASan covers them in CI);
# "possibly lost" blocks are the
# OpenMP and OpenBLAS thread pools and are not counted.
VALGRIND = valgrind
VALGRIND_FLAGS = --leak-check=full --errors-for-leak-kinds=definite,indirect \
	--show-leak-kinds=definite,indirect --error-exitcode=1 --quiet
VALGRIND_SKIP = t/huge.t t/llama_hf.t t/ce.t t/fixtures.t t/threads.t
.PHONY: valgrind
valgrind: $(check_PROGRAMS)
	@command -v $(VALGRIND) >/dev/null 2>&1 || { echo "make valgrind: $(VALGRIND) not found (Debian: apt-get install valgrind)" >&2; exit 1; }
	@fail=0; mkdir -p t/valgrind; \
	for t in $(check_PROGRAMS); do \
	  case " $(VALGRIND_SKIP) " in *" $$t "*) echo "SKIP: $$t (slow)"; continue ;; esac; \
	  log=t/valgrind/`basename $$t .t`.log; \
	  if MEL_TOP_SRCDIR=$(top_srcdir) MEL_TOP_BUILDDIR=$(top_builddir) OMP_NUM_THREADS=2 \
	     $(LIBTOOL) --mode=execute $(VALGRIND) $(VALGRIND_FLAGS) ./$$t >$$log 2>&1 && \
	     ! grep -q '^not ok' $$log; then echo "PASS: $$t"; \
	  else echo "FAIL: $$t (see $$log)"; fail=1; fi; \
	done; test $$fail = 0 && echo "make valgrind: no memory errors, no leaks"
CLEANFILES += t/valgrind/*.log
