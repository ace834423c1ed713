"""The experiments over the whole pipeline: `python -m sim verify` (verify, its report) and
`python -m sim verify --scaling` (scaling, claim C6), `python -m sim experiments strategies`
(strategies, strategies_report: claims C7 and C8)."""
