"""chinwag.export"""
