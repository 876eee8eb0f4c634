# The two commands that matter: `make demo` and `make test`. Each installs what it needs first.
.PHONY: install demo test test-fast bench reliability reproduce schemas

install:
	@scripts/install.sh

demo: install
	.venv/bin/python -m worker.demo $(ARGS)

test: install
	scripts/check.sh $(ARGS)

bench: install
	.venv/bin/python -m benchmarks.end_to_end $(ARGS)

reliability: install
	.venv/bin/python -m reliability $(ARGS)

reproduce: install
	.venv/bin/querylife reproduce --fresh $(ARGS)

schemas: install
	.venv/bin/python -m schemas.export
