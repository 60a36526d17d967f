"""Independent implementations the EHR feeds are checked against, in Java from Maven
Central: HAPI HL7v2 (``HapiSender.java``, deploy/local/hapi-hl7v2-pom.xml) and HAPI
FHIR's validator (``FhirValidate.java``, ``fhir-validator-pom.xml``). Their jars are
fetched by Maven on first use into ``~/.cache/clinicflow/<name>`` (pinned poms), as
Kafka's are; a Java file is compiled once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tools.stack import _file_lock, cache_dir, require_java, require_maven

HERE = Path(__file__).resolve().parent


def maven_jars(pom: Path, name: str, sentinel: str) -> Path:
    """The jars ``pom`` resolves, in ``cache_dir()/name``: Maven copies them from Maven
    Central the first time (``sentinel`` must be among them), later calls return at once
    (a marker lists a complete copy)."""
    libs = cache_dir() / name
    marker = libs / "complete"
    if marker.is_file() and all((libs / n).is_file() for n in marker.read_text().split()):
        return libs
    require_java()
    mvn = require_maven()
    with _file_lock(cache_dir() / f".{name}-lock"):
        if marker.is_file():
            return libs
        staging = cache_dir() / f"{name}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}"], capture_output=True, text=True, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if result.returncode != 0 or sentinel not in jars:
            shutil.rmtree(staging, ignore_errors=True)
            raise AssertionError(f"Maven could not fetch {name} (exit {result.returncode})"
                                 f":\n{(result.stdout + result.stderr)[-2000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text("\n".join(jars) + "\n")
    return libs


def java_command(source: Path, libs: Path, classes: Path) -> list[str]:
    """``java -cp ... <Main>`` for ``source`` compiled against every jar of ``libs``."""
    classpath = os.pathsep.join(str(p) for p in sorted(libs.glob("*.jar")))
    javac = shutil.which("javac")
    assert javac is not None, "javac (a JDK 17) is needed: apt-get install openjdk-17-jdk-headless"
    compiled = subprocess.run([javac, "-d", str(classes), "-cp", classpath, str(source)],
                              capture_output=True, text=True, check=False)
    assert compiled.returncode == 0, compiled.stderr
    # a short run: the quick compiler only, one GC thread (start-up is most of its time)
    return ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp",
            os.pathsep.join([str(classes), classpath]), source.stem]
