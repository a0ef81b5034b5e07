# cachesvc — the two commands that matter: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-dev

.PHONY: run test lint typecheck unit peers bench bench-smoke deploy-check clean conformance

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

## run: start cachesvc on the embedded default configuration (127.0.0.1:5000, admin :5050)
run: $(RUN_STAMP)
	$(VENV)/bin/cachesvc serve $(if $(CONFIG),--config $(CONFIG))

## test: install everything (venv, real peers when root) and run lint, types and the suite
test: $(STAMP)
	bash scripts/install-peers.sh
	$(MAKE) --no-print-directory lint typecheck deploy-check bench-smoke
	$(PY) -m pytest -q   # last, so its summary line closes the output

lint: $(STAMP)
	$(VENV)/bin/ruff check cachesvc tests benchmarks scripts
	$(VENV)/bin/ruff format --check cachesvc
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy cachesvc tests/peers benchmarks

unit: $(STAMP)
	$(PY) -m pytest -q -m "not peers"

peers: $(STAMP)
	$(PY) -m pytest -q -m peers

## bench: the side-by-side benchmark (cachesvc vs distribution proxy vs nginx)
bench: $(STAMP)
	bash scripts/install-peers.sh
	$(PY) -m benchmarks

## deploy-check: render deploy/ (alone, with the Prometheus Operator component, with cluster/) and
## validate it strictly, promtool check + unit-test the alerts, hadolint the Dockerfile
K8S_VERSIONS ?= 1.33.0 1.37.0
RENDERED := $(VENV)/deploy-rendered
deploy-check: $(STAMP)
	rm -rf $(RENDERED) && mkdir -p $(RENDERED)/monitoring
	printf 'resources: [../../../deploy]\ncomponents: [../../../deploy/components/prometheus-operator]\n' \
	  > $(RENDERED)/monitoring/kustomization.yaml
	mkdir -p $(RENDERED)/cluster
	printf 'resources: [../../../deploy]\ncomponents: [../../../deploy/cluster]\n' \
	  > $(RENDERED)/cluster/kustomization.yaml
	$(PY) scripts/deploy_render.py $(RENDERED)/cluster --out $(RENDERED)/cluster.yaml
	$(PY) scripts/deploy_render.py deploy --out $(RENDERED)/deploy.yaml
	$(PY) scripts/deploy_render.py deploy/cleanup --out $(RENDERED)/cleanup.yaml
	$(PY) scripts/deploy_render.py $(RENDERED)/monitoring --out $(RENDERED)/monitoring.yaml
	$(PY) scripts/deploy_render.py --check-rules
	for v in $(K8S_VERSIONS); do \
	  $(VENV)/bin/kubernetes-validate --strict --quiet -k $$v \
	    $(RENDERED)/deploy.yaml $(RENDERED)/cleanup.yaml $(RENDERED)/cluster.yaml || exit 1; done
	promtool check rules deploy/prometheus-rules.yaml
	promtool test rules deploy/tests/rules-test.yaml
	$(VENV)/bin/hadolint Dockerfile

bench-smoke: $(STAMP)
	$(PY) -m benchmarks --smoke --out $(VENV)/bench-smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data

## conformance: the OCI distribution-spec pull specs against cachesvc (needs ../shared/conformance)
conformance: $(STAMP)
	$(PY) -m pytest -q tests/test_conformance.py
