# vdgui: `make run` starts the application on a demo chain, `make test` runs the suite.
# Both set up everything they need on a fresh Debian machine (run as root, or with sudo).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# Debian packages: qemu-utils is the interop oracle (and GNU time measures the
# benchmarks' peak memory); desktop-file-utils, appstream
# and shared-mime-info validate the desktop entry, the metainfo and the MIME info;
# binutils (objdump, objcopy) is what PyInstaller builds the bundle with; the rest
# are the Qt runtime libraries the PySide6 wheels need (xcb for a real display,
# EGL/GL/fontconfig for every platform) and Xvfb for running the application
# without a display.
DEB_PACKAGES := qemu-utils time desktop-file-utils appstream shared-mime-info binutils xvfb xauth \
	libegl1 libgl1 libopengl0 libfontconfig1 libfreetype6 libdbus-1-3 libglib2.0-0 \
	libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1 libxrender1 libxi6 \
	libxcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 \
	libxcb-xinerama0 libxcb-xkb1 libwayland-client0 libwayland-cursor0

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test stress deps venv bench package clean

run: venv
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		$(VENV)/bin/vdgui --demo; \
	else \
		echo "No display found: starting vdgui on a virtual X server (xvfb-run)."; \
		xvfb-run -a $(VENV)/bin/vdgui --demo; \
	fi

test: deps venv
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not stress" -q

stress: deps venv
	$(PIP) install -q atheris -r packaging/requirements.txt
	QT_QPA_PLATFORM=offscreen VDGUI_FUZZ_EXAMPLES=300 $(PY) -m pytest -m "stress" -q
	QT_QPA_PLATFORM=offscreen VDGUI_FUZZ_EXAMPLES=300 $(PY) -m pytest -q tests/robustness/test_mutations.py

bench: deps venv
	$(PY) bench/run.py

# The sdist, the wheel and the self-contained Linux bundle (vdgui and vdimg) in
# dist/, then the bundle's own tests: vdimg --version and the GUI's smoke test.
package: deps venv
	$(PIP) install -q -r packaging/requirements.txt
	$(PY) packaging/build.py
	QT_QPA_PLATFORM=offscreen VDGUI_BUNDLE="$$($(PY) packaging/build.py --print-bundle)" \
		$(PY) -m pytest -q -m stress tests/packaging/test_bundle.py

deps: .stamp-deps
.stamp-deps: Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml .stamp-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) .stamp-deps build dist *.egg-info .pytest_cache .hypothesis
