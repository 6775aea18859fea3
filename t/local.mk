# TAP tests of the core.  Each t/NAME.t is built from t/NAME.c.
check_PROGRAMS += t/ce.t
t_ce_t_SOURCES = t/ce.c
t_ce_t_LDADD = $(TEST_LIBS)
TESTS += t/ce.t
check_PROGRAMS += t/prims.t
t_prims_t_SOURCES = t/prims.c
t_prims_t_LDADD = $(TEST_LIBS)
TESTS += t/prims.t
check_PROGRAMS += t/engine.t
t_engine_t_SOURCES = t/engine.c
t_engine_t_LDADD = $(TEST_LIBS)
TESTS += t/engine.t
check_PROGRAMS += t/pref.t
t_pref_t_SOURCES = t/pref.c
t_pref_t_LDADD = $(TEST_LIBS)
TESTS += t/pref.t
check_PROGRAMS += t/grpo.t
t_grpo_t_SOURCES = t/grpo.c
t_grpo_t_LDADD = $(TEST_LIBS)
TESTS += t/grpo.t

# The user-defined transform example doubles as a test (it prints TAP).
check_PROGRAMS += t/focal.t
t_focal_t_SOURCES = examples/focal.c
t_focal_t_LDADD = lib/libmel.la -lm
TESTS += t/focal.t
check_PROGRAMS += t/vmath.t
t_vmath_t_SOURCES = t/vmath.c
t_vmath_t_LDADD = t/libtap.la -lm
t_vmath_t_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/lib
TESTS += t/vmath.t
check_PROGRAMS += t/lowp.t
t_lowp_t_SOURCES = t/lowp.c
t_lowp_t_LDADD = $(TEST_LIBS)
TESTS += t/lowp.t
check_PROGRAMS += t/vpad.t
t_vpad_t_SOURCES = t/vpad.c
t_vpad_t_LDADD = $(TEST_LIBS)
TESTS += t/vpad.t
check_PROGRAMS += t/params.t
t_params_t_SOURCES = t/params.c
t_params_t_LDADD = $(TEST_LIBS)
TESTS += t/params.t

# kl, reverse_kl, jsd with and without labels (use_labels) vs the fp64 reference.
check_PROGRAMS += t/kd.t
t_kd_t_SOURCES = t/kd.c
t_kd_t_LDADD = $(TEST_LIBS)
TESTS += t/kd.t

# Every operation on every backend of the build (supports_op, coverage up to
# OP__COUNT).  Linked statically to reach the internal backend registry.
check_PROGRAMS += t/backend_ops.t
t_backend_ops_t_SOURCES = t/backend_ops.c
t_backend_ops_t_LDADD = $(TEST_LIBS)
t_backend_ops_t_LDFLAGS = -static
TESTS += t/backend_ops.t
# mel_set_precision (EXACT, FAST16, TF32) on the CPU against fp64 models
check_PROGRAMS += t/precision.t
t_precision_t_SOURCES = t/precision.c
t_precision_t_LDADD = $(TEST_LIBS)
TESTS += t/precision.t

check_PROGRAMS += t/skip.t
t_skip_t_SOURCES = t/skip.c
t_skip_t_LDADD = $(TEST_LIBS)
TESTS += t/skip.t

# Vocabulary parallelism under mpirun (t/vocab_parallel.t runs t/vp with
# 1, 2 and 3 processes; it skips when libmel has no MPI).
if HAVE_MPI
check_PROGRAMS += t/vp
t_vp_SOURCES = t/vp.c
t_vp_CFLAGS = $(AM_CFLAGS) $(MPI_CFLAGS)
t_vp_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/mel -I$(top_srcdir)/t
t_vp_LDADD = tools/mel/libnpy.la $(TEST_LIBS) $(MPI_LIBS)
endif
dist_check_SCRIPTS += t/vocab_parallel.t
TESTS += t/vocab_parallel.t

# The vocabulary-parallel training example (examples/vocab_parallel.c), also
# run by t/vocab_parallel.t with 2 and 3 processes.
if HAVE_MPI
noinst_PROGRAMS += examples/vocab_parallel
examples_vocab_parallel_SOURCES = examples/vocab_parallel.c
examples_vocab_parallel_CFLAGS = $(AM_CFLAGS) $(MPI_CFLAGS)
examples_vocab_parallel_LDADD = lib/libmel.la $(MPI_LIBS) -lm
else
EXTRA_DIST += examples/vocab_parallel.c
endif
# The CUDA backend as a module (backends/registry.c): a CPU-only process
# maps no CUDA library; what a failed CUDA context names.
check_PROGRAMS += t/backend_module.t
t_backend_module_t_SOURCES = t/backend_module.c
t_backend_module_t_LDADD = $(TEST_LIBS)
TESTS += t/backend_module.t

# wide logits: no subnormal dZ is stored (issue 20), every built-in and a
# user transform against fp64 closed forms
check_PROGRAMS += t/subnormal.t
t_subnormal_t_SOURCES = t/subnormal.c
t_subnormal_t_LDADD = $(TEST_LIBS)
TESTS += t/subnormal.t
# the tiled executor (mel_set_tile_cols) against the row executor, fp64
# references and finite differences; the planner; the automatic choice
check_PROGRAMS += t/tiles.t
t_tiles_t_SOURCES = t/tiles.c
t_tiles_t_LDADD = $(TEST_LIBS)
TESTS += t/tiles.t
