"""What a local cluster runs beside Ray: the embedded S3 gateway (:mod:`raysvc.local.s3gateway`)."""
