# The Python package (doc/python.md): installed into $(pythondir)/libmel by
# make install; used from the build tree with PYTHONPATH=$(top_srcdir)/python.
# It loads lib/libmel.so through ctypes; the library directory of the install is
# written into the installed package (_config.py) at install time, so that
# `make install prefix=DIR` records DIR.
PY_SOURCES = \
	python/libmel/__init__.py \
	python/libmel/_lib.py \
	python/libmel/_core.py \
	python/libmel/_dsl.py \
	python/libmel/_function.py \
	python/libmel/hf.py \
	python/libmel/trl.py
if HAVE_PYTHON
melpydir = $(pythondir)/libmel
melpy_PYTHON = $(PY_SOURCES)
install-data-hook: install-python-config
uninstall-hook: uninstall-python-config
.PHONY: install-python-config uninstall-python-config
install-python-config:
	$(MKDIR_P) '$(DESTDIR)$(melpydir)'
	printf '# written by make install\nLIBDIR = %s\n' "'$(libdir)'" > '$(DESTDIR)$(melpydir)/_config.py'
uninstall-python-config:
	rm -f '$(DESTDIR)$(melpydir)/_config.py'
else
EXTRA_DIST += $(PY_SOURCES)
endif

# Tests (TAP through t/python/run.sh; they skip without a Python that imports torch,
# and in sanitizer builds).
PY_TESTS = t/python/builtins.t t/python/dsl.t t/python/challenge.t t/python/errors.t \
	t/python/hf.t t/python/trl.t t/python/autograd.t t/python/compile.t t/python/tiles.t t/python/pip.t
TESTS += $(PY_TESTS)
dist_check_SCRIPTS += $(PY_TESTS) t/python/run.sh
EXTRA_DIST += t/python/tap.py t/python/test_builtins.py t/python/test_dsl.py \
	t/python/test_challenge.py t/python/test_errors.py t/python/test_hf.py \
	t/python/test_trl.py t/python/test_vp.py t/python/test_autograd.py \
	t/python/test_compile.py
include t/fixtures/hf/files.mk
EXTRA_DIST += $(HF_FIXTURES) t/fixtures/hf/files.mk

# pip (issue 22): python/pyproject.toml + setup.py.  `pip install ./python`
# installs the package alone, against an installed libmel (libmel._lib finds
# it).  make wheel: a wheel carrying this build's libmel.so (and the CUDA
# module libmel-cuda.so when built) in WHEEL_DIR, made by pip from a staging
# copy (.wheel/) with no network: --no-build-isolation takes setuptools and
# wheel from $(PYTHON).  It prints the libraries the wheel's libmel.so needs
# on the target machine (configure --without-mpi for one that needs only
# OpenBLAS and OpenMP).  t/python/pip.t tests both in fresh virtual
# environments.
EXTRA_DIST += python/pyproject.toml python/setup.py
WHEEL_DIR = $(abs_top_builddir)/dist
WHEEL_STAGE = $(abs_top_builddir)/.wheel
WHEEL_LIBS = lib/libmel.la
if HAVE_CUDA
WHEEL_LIBS += lib/libmel-cuda.la
endif
.PHONY: wheel
wheel: $(WHEEL_LIBS)
	rm -rf '$(WHEEL_STAGE)'
	$(MKDIR_P) '$(WHEEL_STAGE)/libmel' '$(WHEEL_DIR)'
	cp $(srcdir)/python/pyproject.toml $(srcdir)/python/setup.py '$(WHEEL_STAGE)/'
	cd $(srcdir) && cp $(PY_SOURCES) '$(WHEEL_STAGE)/libmel/'
	for l in $(WHEEL_LIBS); do \
	  so=`echo $$l | sed 's|^lib/\(.*\)\.la$$|\1.so|'`; \
	  cp -L lib/.libs/$$so '$(WHEEL_STAGE)/libmel/'$$so || exit 1; \
	done
	$(PYTHON) -m pip wheel --no-deps --no-build-isolation --no-index -w '$(WHEEL_DIR)' '$(WHEEL_STAGE)'
	@echo "wheel: libmel.so needs on the target machine:" \
	  `ldd '$(WHEEL_STAGE)/libmel/libmel.so' | awk '/=>/ { print $$1 }' | \
	   grep -Ev '^(libc|libm|libdl|librt|libpthread|libgcc_s|ld-linux[^ ]*|linux-vdso)\.so' | tr '\n' ' '`
