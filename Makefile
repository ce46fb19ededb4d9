# Every target creates (or reuses) the virtual environment .venv itself.
#   make lab        install if needed, register the kernel, open JupyterLab on the welcome notebook
#                   (a learner's lab: `make lab INSTRUCTOR=1` adds nbgrader's instructor tools;
#                   `make lab NB=notebooks/05_autoregressive.ipynb` opens another notebook)
#   make test       the whole test suite: pytest over tests/ plus nbval over solutions/, on CPU
#   make student    regenerate notebooks/ (student versions) from solutions/
#   make bench      run every benchmark and refresh the table in benchmarks/README.md
#   make test-gpu   the whole suite, every solution notebook and every benchmark, on CUDA
#   make check NB=notebooks/NN_topic.ipynb   grade one learner notebook (nbval), exercise by exercise
#   make browser    install Debian's chromium for the browser test (root; CI runs it)
# Knobs: PYTHON (interpreter that creates .venv), TORCH (the torch requirement; keep it equal to
# pyproject.toml's pin), PIP_ARGS (extra pip options, e.g. an extra index for CPU-only wheels).

PYTHON ?= python3
TORCH ?= torch==2.13.0
PIP_ARGS ?=
VENV ?= .venv

BIN := $(VENV)/bin
# The stamp's name carries a checksum of TORCH and PIP_ARGS, so changing either reinstalls, and so
# does a newer pyproject.toml.
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH) $(PIP_ARGS)' | cksum | cut -d ' ' -f 1)
SOLUTIONS := $(wildcard solutions/*.ipynb)

.PHONY: install lab test student bench test-gpu check browser

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned in the same pip command as everything else, so pip never swaps in another build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_ARGS) "$(TORCH)" -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

lab: $(STAMP)
	$(BIN)/python -m ipykernel install --user --name mmcourse --display-name "Python (mmcourse)"
	$(BIN)/python -m mmcourse.lab $(if $(INSTRUCTOR),--instructor) $(NB)

test: $(STAMP)
	MMCOURSE_DEVICE=$${MMCOURSE_DEVICE:-cpu} $(BIN)/python -m pytest --durations=15 \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=180 tests $(SOLUTIONS)

student: $(STAMP)
	$(BIN)/python -m mmcourse.student

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --all --update-readme

# The whole suite and every solution notebook on CUDA (in parallel, then each notebook alone),
# then every benchmark; logs and a summary in gpu-logs/. See .ci/gpu-check for its options.
test-gpu: $(STAMP)
	bash .ci/gpu-check --python $(BIN)/python --budget 100000

check: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make check NB=notebooks/NN_topic.ipynb"; exit 2; }
	$(BIN)/python -m mmcourse.grade "$(NB)"

# tests/test_browser.py drives Debian's chromium (Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null || apt-get install -y -q chromium \
		|| { apt-get update -q && apt-get install -y -q chromium; }
	@chromium --version

