"""The run configuration: schema (dataclasses), validation, resolvers, composition."""
