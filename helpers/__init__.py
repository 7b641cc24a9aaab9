"""helpers: the shared package of the Real-Time ML Serving course.

Import the module you need; nothing heavy happens on import::

    from helpers import data, metrics, models
    from helpers.device import pick_device

Modules (one concept each):

- ``settings``  the run profile (``COURSE_PROFILE=quick``) and where data lives
- ``device``    pick cuda / mps / cpu; timers that synchronise the device
- ``data``      deterministic synthetic wafer records, Parquet in chunks
- ``metrics``   latency recorder, percentiles, SLO checks, summary tables
- ``memory``    peak memory of a block of code
- ``repository`` the model repository: layout, configs, safe loading (no pickles), platforms
- ``models``    every model kind the course serves (importing it registers them), the MLP
- ``training``  training the course models into the repository (``make data``)
- ``plots``     the course's standard charts (the only module importing matplotlib)
- ``batching``  ``BatchPolicy`` (when to cut a batch) and the asyncio ``DynamicBatcher``
- ``cache``     TTL + LRU prediction cache with content-hashed keys and request coalescing
- ``bucketing`` padding waste and length buckets for variable-length inputs
- ``wafermaps`` synthesised wafer maps and the defect-pattern CNN
- ``embedder``  the engineer-note embedder (all-MiniLM-L6-v2, offline)
- ``loadgen``   open- and closed-loop load generation; ``python -m helpers.loadgen``
- ``protocol``  Open Inference Protocol (v2) bodies and tensor checks
- ``routing``   weighted, sticky traffic splits between model versions (A/B)
- ``registry``  the versions a server serves, their states, locks and batchers
- ``inference`` the engine: resolve, admit, deadlines, cache and coalescing, jobs, shutdown
- ``jobs``      async jobs: submit, poll, fetch, cancel
- ``routes``    the HTTP layer: one router per concern (v2, health, repository, plain, jobs)
- ``server``    ``ServerSettings``, ``create_app`` (wiring) and ``python -m helpers.server``
- ``http_guards`` body limits, load shedding, failures mapped to status codes
- ``serving``   run a server in a thread or a subprocess, and always stop it
- ``onnx_models`` ONNX export checked against torch, ONNX Runtime sessions, the ONNX platform
- ``compression`` int8 quantization (ONNX Runtime, torchao), unstructured and channel pruning
- ``distillation`` Hinton's distillation loss and training a small student
- ``edge_measure`` size, latency and quality of compressed models, against a device budget
"""

__all__ = [
    "settings", "device", "data", "metrics", "memory", "models", "plots", "batching", "cache",
    "protocol", "routing", "registry", "jobs", "server", "serving", "bucketing", "wafermaps",
    "embedder", "loadgen", "training", "http_guards", "repository", "inference", "routes",
    "onnx_models", "compression", "distillation", "edge_measure",
]
__version__ = "0.1.0"
