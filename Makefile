# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv first.
PY := .venv/bin/python
RECON := $(PY) -m recon.cli
# Spinning OpenMP threads make 2 threads far slower than 1 when another process is busy.
export OMP_WAIT_POLICY := PASSIVE
DEMO_SCENE := scenes/default
DEMO_RUNS := runs/demo

.PHONY: setup demo test bench clean-demo

setup:
	@bash scripts/bootstrap.sh

$(DEMO_SCENE)/transforms_train.json: | setup
	$(RECON) data synth --format blender --out $(DEMO_SCENE) --seed 0

demo: setup $(DEMO_SCENE)/transforms_train.json
	$(RECON) train splat --data $(DEMO_SCENE) --preset fast --out $(DEMO_RUNS)/splat --restart
	$(RECON) eval $(DEMO_RUNS)/splat
	$(RECON) export $(DEMO_RUNS)/splat --format ply
	$(RECON) render $(DEMO_RUNS)/splat --path orbit --frames 60
	$(RECON) train nerf --data $(DEMO_SCENE) --preset fast --out $(DEMO_RUNS)/nerf --restart
	$(RECON) eval $(DEMO_RUNS)/nerf
	$(RECON) render $(DEMO_RUNS)/nerf --path orbit --frames 60

test: setup
	$(PY) -m pytest -q -p no:dash tests

bench: setup
	$(PY) bench/nerf.py
	$(PY) bench/splat_raster.py
	$(PY) bench/splat_train.py
	$(PY) bench/dream.py
	$(PY) bench/distributed.py
	$(PY) bench/batch.py

clean-demo:
	rm -rf $(DEMO_SCENE) $(DEMO_RUNS)
