# The Llama trainer (issue 5): examples/llama/, doc/llama.md.
LLAMA_MODEL_SOURCES = \
	examples/llama/model.c examples/llama/model.h \
	examples/llama/head.c examples/llama/head.h
LLAMA_CFLAGS = $(AM_CFLAGS) $(OPENBLAS_CFLAGS) -O2
LLAMA_LIBS = lib/libmel.la $(OPENBLAS_LIBS) -lm

noinst_PROGRAMS += examples/llama/llama-train
examples_llama_llama_train_SOURCES = examples/llama/llama-train.c \
	examples/llama/data.c examples/llama/data.h \
	examples/llama/grpo.c examples/llama/grpo.h $(LLAMA_MODEL_SOURCES)
examples_llama_llama_train_CFLAGS = $(LLAMA_CFLAGS)
examples_llama_llama_train_LDADD = $(LLAMA_LIBS)

# The C model against HF transformers' LlamaForCausalLM (fixture written by
# examples/llama/gen_hf_fixture.py; never run by make).
check_PROGRAMS += t/llama_hf.t
t_llama_hf_t_SOURCES = t/llama_hf.c $(LLAMA_MODEL_SOURCES)
t_llama_hf_t_CFLAGS = $(LLAMA_CFLAGS)
t_llama_hf_t_LDADD = $(TEST_LIBS) $(OPENBLAS_LIBS)
TESTS += t/llama_hf.t

# GRPO (issue 11): libmel's grpo head against the naive head and an fp64
# computation from its logits, step by step on a short run.
check_PROGRAMS += t/llama_grpo.t
t_llama_grpo_t_SOURCES = t/llama_grpo.c $(LLAMA_MODEL_SOURCES) \
	examples/llama/grpo.c examples/llama/grpo.h
t_llama_grpo_t_CFLAGS = $(LLAMA_CFLAGS)
t_llama_grpo_t_LDADD = $(TEST_LIBS) $(OPENBLAS_LIBS)
TESTS += t/llama_grpo.t

# llama-train --task grpo on the command line: output format, exit codes.
dist_check_SCRIPTS += t/llama_grpo_cli.t
TESTS += t/llama_grpo_cli.t
t/llama_grpo_cli.log: examples/llama/llama-train$(EXEEXT)

# --compare on tiny: the mel and naive heads train to the same losses.
dist_check_SCRIPTS += t/llama_compare.t
TESTS += t/llama_compare.t
t/llama_compare.log: examples/llama/llama-train$(EXEEXT)

EXTRA_DIST += examples/llama/gen_hf_fixture.py \
	examples/llama/compare_logs.sh \
	t/fixtures/llama/tiny-weights.ckpt \
	t/fixtures/llama/tiny-grads.ckpt \
	t/fixtures/llama/tiny-batch.bin

# make demo-llama: train tiny with both heads side by side on the default
# corpus (/usr/share/common-licenses), print the table summary, each head's
# memory and the plot.  OMP_WAIT_POLICY=passive keeps OpenMP's spinning
# threads from starving OpenBLAS's on small machines.
DEMO_LLAMA_FLAGS = --config tiny --compare --steps 300 --batch 8 --seq 64 \
	--chunk-rows 64 --seed 1234
.PHONY: demo-llama
demo-llama: examples/llama/llama-train$(EXEEXT)
	OMP_WAIT_POLICY=passive $(builddir)/examples/llama/llama-train \
	  $(DEMO_LLAMA_FLAGS) --log-csv demo-llama.csv \
	  $$(command -v gnuplot >/dev/null 2>&1 && echo --plot demo-llama.png) \
	  > demo-llama.log; rc=$$?; \
	awk '$$1 == "step" && ($$2 <= 5 || $$2 % 25 == 0)' demo-llama.log; \
	grep -v '^step ' demo-llama.log | grep -v '^llama-train:'; \
	echo "demo-llama: full log in demo-llama.log, per-step CSV in demo-llama.csv"; \
	exit $$rc
CLEANFILES += demo-llama.log demo-llama.csv demo-llama.png demo-llama.png.gp

# make demo-grpo (issue 11): online GRPO on tiny ("continue the sequence"),
# libmel's grpo head training the policy with the naive full-logits head
# run beside it on the same hidden states every step (--lockstep); prints
# every step, the summary (memory of both heads) and the plot.
DEMO_GRPO_FLAGS = --task grpo --compare --lockstep --steps 500 --seed 1234
.PHONY: demo-grpo
demo-grpo: examples/llama/llama-train$(EXEEXT)
	{ OMP_WAIT_POLICY=passive $(builddir)/examples/llama/llama-train \
	  $(DEMO_GRPO_FLAGS) --log-csv demo-grpo.csv \
	  $$(command -v gnuplot >/dev/null 2>&1 && echo --plot demo-grpo.png); \
	  echo $$? > demo-grpo.rc; } | tee demo-grpo.log | grep -v '^llama-train:'; \
	rc=$$(cat demo-grpo.rc); rm -f demo-grpo.rc; \
	echo "demo-grpo: full log in demo-grpo.log, per-step CSV in demo-grpo.csv"; \
	exit $$rc
CLEANFILES += demo-grpo.log demo-grpo.csv demo-grpo.png demo-grpo.png.gp demo-grpo.rc
