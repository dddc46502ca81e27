/* The noop network plugin has no public API beyond the plugin entry symbol. */
#pragma once
