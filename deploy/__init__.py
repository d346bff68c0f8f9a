"""Serving (serve-engine), gRPC clients, and deployment files for other machines (deploy-engine)."""
