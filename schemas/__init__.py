"""JSON Schema contracts (draft 2020-12) for every record riskstream reads or writes."""
