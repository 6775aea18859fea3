# The mel command-line tool (doc/CLI.md), its tests and the CE demo.
bin_PROGRAMS += examples/mel
examples_mel_SOURCES = examples/mel.c
examples_mel_LDADD = lib/libmel.la examples/libnpy.la -lm

# .npy reader/writer: round trips and malformed files.
check_PROGRAMS += t/npy.t
t_npy_t_SOURCES = t/npy.c
t_npy_t_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/examples -I$(top_srcdir)/t
t_npy_t_LDADD = examples/libnpy.la $(TEST_LIBS)
TESTS += t/npy.t

# The CLI end to end (a shell TAP script; needs examples/mel built).
dist_check_SCRIPTS += t/cli.t
TESTS += t/cli.t

# make demo-ce: naive vs recompute vs fused on a CE training step.
DEMO_CE_FLAGS = --transform ce --rows 4096 --dim 1024 --vocab 32768 --dtype f32 \
	--modes naive,recompute,fused --repeat 1 --warmup 0
.PHONY: demo-ce
demo-ce: examples/mel$(EXEEXT)
	$(builddir)/examples/mel bench $(DEMO_CE_FLAGS) --csv demo-ce.csv
	@echo "demo-ce: table above; CSV in demo-ce.csv"
CLEANFILES += demo-ce.csv
