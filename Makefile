# The two commands that matter: `make demo` and `make test`. Each installs what it needs first.
.PHONY: install demo test test-fast bench reliability reproduce reproduce-large schemas

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

# The long runs (#22): evaluate-v2 with the variants that need no GenFilt judge also trained on the
# 41k-product catalogue, 3 seeds each (~4.5 min a run on 2 cores; cached in .cache/runs-v2, resumable).
LARGE_DATA ?= ../shared/data/fashion-products-large
reproduce-large: install
	.venv/bin/querylife evaluate-v2 --large-data $(LARGE_DATA) --large-seeds 3 \
		--large-variants baseline_mean,ablate_no_genfilt,baseline_concat,zero_shot --judges gemma3,overlap $(ARGS)

schemas: install
	.venv/bin/python -m schemas.export
