# The CUDA backend (issue 7) as a module of its own (issue 22).  With
# --with-cuda, backends/cuda/cuda.cu is compiled by nvcc through libtool
# (backends/cuda/nvcc-wrap hands libtool's -fPIC to the host compiler) into
# lib/libmel-cuda.so, which links cuBLAS and the CUDA runtime; libmel.so
# links neither and loads the module (backends/registry.c) on the first
# mel_ctx_create(MEL_BACKEND_CUDA).  It is built into lib/ beside libmel so
# the build tree's lib/.libs holds both (how tests find it) and installed
# into $(libdir) beside the library.  Without --with-cuda
# backends/registry.c lists CUDA with no ops, and
# mel_ctx_create(MEL_BACKEND_CUDA) returns MEL_ERR_UNSUPPORTED.
EXTRA_DIST += backends/cuda/cuda.cu backends/cuda/nvcc-wrap
if HAVE_CUDA
# no C++ runtime is needed: no exceptions, RTTI or guarded statics
NVCC_FLAGS = -std=c++17 -O3 $(NVCC_GENCODE) \
	-Xcompiler=-Wall,-fvisibility=hidden,-fno-exceptions,-fno-threadsafe-statics,-fno-rtti
lib_LTLIBRARIES += lib/libmel-cuda.la
lib_libmel_cuda_la_SOURCES =
lib_libmel_cuda_la_LIBADD = backends/cuda/cuda.lo $(CUDA_LIBS)
lib_libmel_cuda_la_LDFLAGS = -module -avoid-version -shared -Wl,--no-undefined $(AM_LDFLAGS)
backends/cuda/cuda.lo: $(srcdir)/backends/cuda/cuda.cu $(srcdir)/lib/mel_internal.h $(srcdir)/backends/backend.h \
		$(srcdir)/include/mel.h config.h
	@$(MKDIR_P) backends/cuda
	$(AM_V_GEN)$(LIBTOOL) $(AM_V_lt) --tag=CC --mode=compile $(SHELL) $(srcdir)/backends/cuda/nvcc-wrap \
		$(NVCC) $(NVCC_FLAGS) $(DEFS) $(AM_CPPFLAGS) $(CUDA_CFLAGS) -c -o $@ \
		$(srcdir)/backends/cuda/cuda.cu

# GPU benchmark: naive vs recompute vs fused CE on device memory.
noinst_PROGRAMS += examples/bench_cuda
examples_bench_cuda_SOURCES = examples/bench_cuda.c
examples_bench_cuda_CPPFLAGS = $(AM_CPPFLAGS) $(CUDA_CFLAGS)
examples_bench_cuda_LDADD = lib/libmel.la $(CUDA_LIBS) -lpthread -lm
endif
