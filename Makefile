# The two commands that matter: `make demo` and `make test`. Each installs what it needs first.
.PHONY: install demo test test-fast bench reliability reproduce schemas

install:
	@scripts/install.sh

demo: install
	.venv/bin/python -m harness demo $(ARGS)

test: install
	scripts/check.sh $(ARGS)

# SCALE_SIZES: catalogue sizes of the state benchmark (long mode: SCALE_SIZES="100000 1000000")
SCALE_SIZES ?= 100000
bench: install
	.venv/bin/python -m benchmarks.end_to_end $(ARGS)
	.venv/bin/python -m benchmarks.state_scale --sizes $(SCALE_SIZES)
	.venv/bin/python -m benchmarks.backfill_rate --products 1500
	.venv/bin/python -m benchmarks.ranker_latency
	.venv/bin/python -m benchmarks.zipf_cache --logs 6000

reliability: install
	.venv/bin/python -m reliability $(ARGS)

reproduce: install
	.venv/bin/querylife reproduce --fresh $(ARGS)

schemas: install
	.venv/bin/python -m schemas.export
