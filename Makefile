# The dev loop. Run inside a virtual environment with `pip install -e '.[test]'` done.
.PHONY: test lint format bench bench-local completions

test:
	python -m pytest -q

lint:
	ruff check .
	ruff format --check .
	mypy

format:
	ruff format .
	ruff check --fix .

bench:
	python bench/startup.py
	python bench/stream.py
	python bench/memory.py

bench-local:  # needs the local extra
	python bench/local.py
	python bench/speed.py
	python bench/followup.py

completions:
	python tests/test_completions.py
