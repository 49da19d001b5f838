"""Kits for porting V-Warper to a new architecture: tiny random models, the adapter conformance
kit and its probes, and model inspection. The library never imports this package; plugin
authors reach it through `vwarper_hooks.testing`, the apps through its modules."""
