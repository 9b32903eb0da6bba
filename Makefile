# Two commands do all the set-up on a fresh Debian machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
DEMO_OUT ?= outputs/demo
DEMO_STEPS ?= 200

.PHONY: setup demo test test-slow interop bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure_gl.sh
	@scripts/ensure_gl.sh
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; set PY=/path/to/python3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The main job on the embedded MetaWorld default: collect rendered expert demonstrations, annotate them
# (scripted teacher, kinematic phases and direction cues), audit the labels, and train the tiny student.
demo: $(STAMP)
	$(BIN)/vla-distill collect --tasks reach-v3,push-v3 --episodes 4 --out $(DEMO_OUT)/dataset
	$(BIN)/vla-distill inspect --quick $(DEMO_OUT)/dataset
	rm -rf $(DEMO_OUT)/annotated
	$(BIN)/vla-distill annotate --dataset $(DEMO_OUT)/dataset --out $(DEMO_OUT)/annotated --teacher scripted
	$(BIN)/vla-distill audit --dataset $(DEMO_OUT)/annotated
	rm -rf $(DEMO_OUT)/student
	$(BIN)/vla-distill train --dataset $(DEMO_OUT)/annotated --preset tiny --steps $(DEMO_STEPS) --batch-size 32 \
		--save-every 100 --log-every 20 --out $(DEMO_OUT)/student

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Checks compatibility with lerobot's own LeRobotDataset code in a separate environment
# (lerobot needs an older torch and torchvision, which must never enter .venv).
interop: $(STAMP)
	scripts/lerobot_interop.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_collect.py
	$(BIN)/python benchmarks/bench_dataloader.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .venv-lerobot outputs .pytest_cache
