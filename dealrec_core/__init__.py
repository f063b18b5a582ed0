"""The ground floor of dealrec: what the models (``surrogates``, ``finetune``) and the engine
(``dealrec``) all use, importing none of them.

- ``data``: the samples table and item catalogue (read, validate, write, hash), atomic writes;
- ``evaluate``: the one full-ranking evaluator;
- ``batching``: padding ragged id rows into batches; ``training``: the one early-stopping loop;
- ``errors``: the one-line error types; ``paths``: output checks and temporary names;
- ``options``: click types shared by every command; ``threads``: fixed torch thread counts.
- ``hashing``: the splitmix64 mixer behind every id-keyed random draw;
- ``devices``: where torch work runs and in which float type (``--device``, ``--dtype``), one rule.
- ``tasks``: the scoring-task contract every surrogate and effort target fills, and the registry by name.
"""
__version__ = "0.1.0"
