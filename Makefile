# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup data test demo studies bench clean-cache

setup: $(STAMP)

# torch first, on its own: any other spec would pull the CUDA build; the constraints file
# then pins torch and torchvision for everything else
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# its loader imports tensorflow; raysvc reads its pickles directly
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

# the emoji dataset: two npm packs, once; meta.json is written last, so it marks a whole build
EMOJI := .data/emoji/meta.json
data: $(EMOJI)

$(EMOJI): | $(STAMP)
	$(PY) -m raysvc.datasets.emoji_build build --root .data/emoji

test: $(STAMP) $(EMOJI)
	$(PY) -m pytest -q

# a local Ray head and S3 gateway, the demo grid through `ray job submit`, then the
# aggregated table read back from object storage; the cluster stops whatever happens
demo: $(STAMP) $(EMOJI)
	cluster/start_local.sh
	. ./.ray-local.env && status=0; \
	$(VENV)/bin/ray job submit --working-dir . -- python -m jobs.grid jobs/configs/demo.yaml --out s3://raysvc/demo \
	  && $(PY) -m jobs.report s3://raysvc/demo --out reports/demo \
	  && $(PY) -m jobs.demo_selections s3://raysvc/demo \
	  && $(VENV)/bin/raysvc runs s3://raysvc/demo || status=$$?; \
	cluster/stop_local.sh; \
	[ $$status -eq 0 ] && echo "demo runs: s3://raysvc/demo (kept in .s3/); report: reports/demo/report.md;" \
	  "to browse: cluster/start_local.sh && . ./.ray-local.env && $(VENV)/bin/raysvc runs s3://raysvc/demo"; \
	exit $$status

# every study file's smoke size (jobs/configs/studies), one run after another in this process,
# then every study's report section (docs/studies.md); runs already under STUDIES_OUT are kept
STUDIES_OUT ?= reports/studies
STUDY_FILES ?= all
studies: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m analysis.studies run $(STUDY_FILES) --size smoke --out $(STUDIES_OUT)/runs
	OMP_NUM_THREADS=1 $(PY) -m analysis.studies report $(STUDIES_OUT)/runs --size smoke --out $(STUDIES_OUT)

bench: $(STAMP)
	$(PY) -m bench.selection

clean-cache:
	rm -rf ~/.cache/raysvc
