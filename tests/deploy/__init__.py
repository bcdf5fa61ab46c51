"""Tests of the deployment artefacts: Dockerfile, compose file, Kubernetes manifests."""
