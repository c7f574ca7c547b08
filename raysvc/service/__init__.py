"""Ray services: shared feature encoding, Ray Train runner, Tune grids of runs.

- :mod:`~raysvc.service.encoders`: the :class:`EncoderService` actor
  (:func:`start_encoder_service`) and :class:`RayEncode`, its client: one encoder pass
  per (dataset, backbone, image size), handed out through the object store;
- :mod:`~raysvc.service.raydata`: encoding a large dataset on Ray Data;
- :mod:`~raysvc.service.train`: :class:`RayTrainRunner`, a TrainRunner on
  ``ray.train.torch.TorchTrainer``, and :func:`make_runner`;
- :mod:`~raysvc.service.scaling`: trial resources and Ray Train scaling, typed;
- :mod:`~raysvc.service.gridspec`: grid files (:func:`load_grid`), validated;
  :mod:`~raysvc.service.driver`: a grid as a Ray Tune experiment (:func:`run_grid`),
  whose trials (:mod:`~raysvc.service.trial`) checkpoint every round and write results
  idempotently.

Import the submodules themselves: ``raysvc.service`` stays cheap (no Ray).
"""
