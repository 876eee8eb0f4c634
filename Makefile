# The two commands that matter: `make demo` and `make test`. Each installs what it needs first.
.PHONY: install demo test test-fast bench reliability reproduce reproduce-large genfilt-large schemas

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

# The long runs (#22), on the 41k-product catalogue (runs cached in .cache/runs-v2, resumable).
LARGE_DATA ?= ../shared/data/fashion-products-large

# evaluate-v2 with every variant also trained on the large catalogue, 3 seeds each (~4-10 min a run
# on 2 cores; GenFilt variants use the committed genfilt_cache/large/ verdicts), and querylife_full
# retrained with each other GenFilt judge.
LARGE_VARIANTS ?= baseline_mean,baseline_concat,zero_shot,querylife_full,ablate_no_type_fusion,ablate_no_alignment,ablate_no_genfilt,image_adapter
reproduce-large: install
	.venv/bin/querylife evaluate-v2 --large-data $(LARGE_DATA) --large-seeds 3 \
		--large-variants $(LARGE_VARIANTS) --judges gemma3,overlap $(ARGS)

# SmolLM2's verdicts on the large catalogue's own training queries (the committed small-catalogue
# cache's sample sizes; ~20 min on one core), kept apart in genfilt_cache/large/: what GenFilt
# variants need before they can be listed in --large-variants.
genfilt-large: install
	.venv/bin/querylife genfilt-cache --judge smollm2 --products $(LARGE_DATA)/products.jsonl \
		--cache-dir querylife/genfilt_cache/large --seed 0 --limit 1500 --per-query 4 \
		--calib-queries 150 --eval-queries 200 --threads 1 --no-progress

schemas: install
	.venv/bin/python -m schemas.export
