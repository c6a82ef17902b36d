"""The hub's Ray Serve deployments: ``ingress`` (holds the ``Hub``) and ``pool`` (the models). With ``cloud.app``,
the only modules that use Ray."""
