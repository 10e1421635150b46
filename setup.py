"""pip distribution `directord-accelerator`: the engine, the converter and the Ansible plugins."""

from setuptools import find_packages, setup

setup(
    name="directord-accelerator",
    version="0.1.0",
    description="Run existing Ansible playbooks through persistent ZeroMQ agents, and port roles to a graph executor.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["accelerator", "accelerator.*", "converters", "converters.*"]),
    package_data={"accelerator": ["py.typed", "schemas/*.json"]},
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "PyYAML>=6",
        "networkx>=3",
        "jinja2>=3",
        "jsonschema>=4.18",
    ],
    extras_require={
        "ansible": ["ansible-core>=2.19,<2.22", "ansible-runner>=2.3"],
        "redis": ["redis>=5"],
        "test": ["pytest>=8", "ansible-core>=2.19,<2.22", "ansible-runner>=2.3", "redis>=5"],
        "bench": ["mitogen>=0.3.20"],  # Directord 0.12.0 goes into its own venv: it would shadow our `directord`
    },
    entry_points={
        "console_scripts": [
            "directord=accelerator.cli:main",
            "convert-role=converters.cli:main",
        ],
    },
)
