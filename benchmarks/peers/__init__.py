"""The 50-rule policy (benchmarks/policy50) in other engines, to time policyd against its peers.

- `policy50.rego` + `rego_peer.py`: Rego, run by regorus through `opa-eval`;
- `cel_peer.py`: CEL programs, run by the Rust CEL bindings (`common-expression-language`);
- `floor.py`: the rules hand-written as one plain Python function (the floor);
- `requests.py`: the requests each engine must decide as policyd does before it is timed;
- `scenario.py`: the benchmark (`python -m benchmarks.run --only peers`).

Rego and CEL come from the optional `bench` extra (`pip install -e '.[bench]'`); without them the
benchmark times the others and says what it skipped.
"""
