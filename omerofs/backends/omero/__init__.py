"""The OMERO server backend through omero-py: its catalog (paged HQL reads, the event log,
an outage cache) and its Java-free import writer."""
