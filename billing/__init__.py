"""Unified metering, billing and settlement (统一度量、计费、结算), with compute and network vouchers."""
