# The README's commands. `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBIAN_DATA := /usr/share/datasets/fashion-mnist
DATA_DIR ?= $(DEBIAN_DATA)
PARQUET ?= data/fashion-mnist
OUT ?= out/fashion_mnist
CONFIG ?= conf/fashion_mnist.toml
TRAIN_ARGS ?=
DIST ?= dist

# Spark's Python workers must run the virtual environment's interpreter.
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install train test lint bench scaling dist pyfiles clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[spark,test,bench,plots,mlflow]'
	touch $@

# Debian's dataset-fashion-mnist holds the official files; fetched only when missing.
$(DEBIAN_DATA)/train-images-idx3-ubyte.gz:
	@command -v apt-get >/dev/null || { echo "install dataset-fashion-mnist or set DATA_DIR"; exit 2; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq dataset-fashion-mnist

$(PARQUET)/train/_SUCCESS: $(VENV)/.installed $(DATA_DIR)/train-images-idx3-ubyte.gz
	$(PY) jobs/prepare_data.py --fashion-mnist --data-dir $(DATA_DIR) --output $(PARQUET) \
		--partitions 8 --if-exists overwrite

train: $(PARQUET)/train/_SUCCESS
	$(PY) jobs/train_dbn.py --config $(CONFIG) --train $(PARQUET)/train --test $(PARQUET)/test \
		--output $(OUT) --if-exists overwrite $(TRAIN_ARGS)

# Two workers, one test file each at a time: the suite waits mostly on JVM starts and small
# Spark jobs, so a second worker fills the second core. The slowest tests are listed at the end.
test: install
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

# The benchmark measures best on an otherwise idle machine; see README "Performance".
bench: install
	$(PY) jobs/benchmark.py --output out/benchmark.json --if-exists overwrite

# Accuracy, reconstruction error and epoch seconds against partitions (docs/performance.md).
scaling: $(PARQUET)/train/_SUCCESS
	$(PY) jobs/scaling_study.py --train $(PARQUET)/train --test $(PARQUET)/test \
		--output out/scaling --if-exists overwrite

lint: install
	$(VENV)/bin/ruff check .

# A wheel for pip, and the package as one zip for `spark-submit --py-files` (see README).
dist: install pyfiles
	$(PY) -m pip wheel --quiet --no-deps -w $(DIST) .

# Standard library only, so any python3 builds it; resources included, bytecode caches not.
pyfiles:
	@mkdir -p $(DIST)
	$(PYTHON) -c 'import pathlib, sys, zipfile; \
		files = sorted(p for p in pathlib.Path("sparkdbn").rglob("*") if p.is_file() \
			and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")); \
		z = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED); \
		[z.write(p, p.as_posix()) for p in files]; z.close()' $(DIST)/sparkdbn.zip.tmp
	mv $(DIST)/sparkdbn.zip.tmp $(DIST)/sparkdbn.zip

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
