"""The runtime: carries the table's decisions out through the ports.

``Lifecycle`` drives one instance, ``Fleet`` many on one timer heap. Private modules
(``_``) are their helpers; nothing here decides a transition.
"""
