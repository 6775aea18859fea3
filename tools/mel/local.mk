# tools/mel/local.mk -- the mel command-line tool (README.md "The mel tool",
# doc/api.md), its .npy library, their tests and the CE part of make demo.
# Included from Makefile.am; paths are relative to the top directory.
#
#   tools/mel/mel          the tool: mel.c dispatches to run.c, gradcheck.c,
#                          bench.c, list.c, plan.c; args.c (options, --param),
#                          inputs.c (.npy inputs), problem.c (random
#                          problems), common.c (resources, errors, context)
#   tools/mel/libnpy.la    .npy reader/writer (npy.c), also used by t/ and fuzz/
#   t/npy.t, t/cli.t       its tests (t/cli.t runs the built tool)
#   make demo-ce           naive vs recompute vs fused on one CE training step
bin_PROGRAMS += tools/mel/mel
tools_mel_mel_SOURCES = tools/mel/mel.c tools/mel/mel_tool.h tools/mel/common.c \
	tools/mel/args.c tools/mel/inputs.c tools/mel/problem.c tools/mel/run.c \
	tools/mel/gradcheck.c tools/mel/bench.c tools/mel/list.c tools/mel/plan.c
tools_mel_mel_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/mel
# MPI for --vocab-parallel (empty without configure's MPI)
tools_mel_mel_CFLAGS = $(AM_CFLAGS) $(MPI_CFLAGS)
tools_mel_mel_LDADD = lib/libmel.la tools/mel/libnpy.la $(MPI_LIBS) -lm
# The installed mel finds the installed libmel without LD_LIBRARY_PATH or
# ldconfig: a run path relative to the binary ($ORIGIN/../lib, right for
# `make install prefix=DIR` and any prefix with the default libdir), then the
# configured libdir.  (In the build tree the libtool wrapper is used.)
tools_mel_mel_LDFLAGS = -Wl,-rpath,'$$ORIGIN/../lib' -Wl,-rpath,$(libdir)

noinst_LTLIBRARIES += tools/mel/libnpy.la
tools_mel_libnpy_la_SOURCES = tools/mel/npy.c tools/mel/npy.h

# .npy reader/writer: round trips and malformed files.
check_PROGRAMS += t/npy.t
t_npy_t_SOURCES = t/npy.c
t_npy_t_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/mel -I$(top_srcdir)/t
t_npy_t_LDADD = tools/mel/libnpy.la $(TEST_LIBS)
TESTS += t/npy.t

# The CLI end to end (a shell TAP script; needs tools/mel/mel built).
dist_check_SCRIPTS += t/cli.t
TESTS += t/cli.t

# mel plan against mel run --stats (a shell TAP script).
dist_check_SCRIPTS += t/plan_cli.t
TESTS += t/plan_cli.t

# make demo-ce: naive vs recompute vs fused on a CE training step, each mode
# in its own process (examples/bench/demo-ce.sh; about 1 min on 2 cores).
DEMO_CE_ENV = REPEAT=3 WARMUP=1
.PHONY: demo-ce
demo-ce: tools/mel/mel$(EXEEXT)
	$(DEMO_CE_ENV) $(SHELL) $(top_srcdir)/examples/bench/demo-ce.sh $(builddir)/tools/mel/mel demo-ce.csv
	@echo "demo-ce: table above; CSV in demo-ce.csv"
CLEANFILES += demo-ce.csv
