"""compat layer (see docs/ARCHITECTURE.md): the APIs the seed systems' users already write,
as thin shapes over `rlserve.backends`. Seed 001: `inference_module` (`InferenceModule`);
seed 003: `inference_engine` (`InferenceEngine`). Nothing is imported here, so each shape
loads only what it uses."""
