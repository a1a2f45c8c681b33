"""chinwag.train"""
