# The CUDA backend against the CPU backend (t/cuda.c).  Built in every
# configuration: without CUDA (or without a device) it prints
# "1..0 # SKIP no CUDA device (...)".  CUDA_CFLAGS and CUDA_LIBS are empty
# when configure did not enable CUDA.
check_PROGRAMS += t/cuda.t
t_cuda_t_SOURCES = t/cuda.c
t_cuda_t_CPPFLAGS = $(AM_CPPFLAGS) $(CUDA_CFLAGS)
t_cuda_t_LDADD = $(TEST_LIBS) $(CUDA_LIBS)
TESTS += t/cuda.t
# The GPU bundle's library check and run.sh, without a GPU (stand-in
# programs; tools/gpu/libcheck.sh, tools/gpu/run.sh).
dist_check_SCRIPTS += t/gpu_bundle.t
TESTS += t/gpu_bundle.t
EXTRA_DIST += tools/gpu/libcheck.sh
