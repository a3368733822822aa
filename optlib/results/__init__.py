"""What numbers become: typed values, result records, comparisons, figures and the report."""
