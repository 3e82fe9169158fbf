"""billing: instance types, the price book, quotes and the charge ledger."""
