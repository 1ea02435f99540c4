"""edgevla"""
