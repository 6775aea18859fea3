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
# The chunk plan of a backend without the row gather (a device backend),
# run on the CPU backend's table with host_memory = 0.  Linked statically
# to reach the backend table.
check_PROGRAMS += t/device_plan.t
t_device_plan_t_SOURCES = t/device_plan.c
t_device_plan_t_LDADD = $(TEST_LIBS)
t_device_plan_t_LDFLAGS = -static
TESTS += t/device_plan.t
