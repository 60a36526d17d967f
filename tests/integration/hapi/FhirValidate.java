import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * Validates FHIR R4 resources (JSON files named on the command line) with HAPI FHIR's
 * instance validator against the R4 core profiles, value sets and code systems that
 * hapi-fhir-validation-resources-r4 ships: nothing is fetched over the network. Prints one
 * line per message: file, severity, location, message (tabs between). Exit 0 when no
 * message is an error or fatal, 1 otherwise.
 */
public class FhirValidate {
    public static void main(String[] args) throws Exception {
        FhirContext context = FhirContext.forR4();
        ValidationSupportChain support = new ValidationSupportChain(
                new DefaultProfileValidationSupport(context),
                new CommonCodeSystemsTerminologyService(context),
                new InMemoryTerminologyServerValidationSupport(context),
                new SnapshotGeneratingValidationSupport(context));
        FhirValidator validator = context.newValidator()
                .registerValidatorModule(new FhirInstanceValidator(support));
        int errors = 0;
        for (String file : args) {
            String text = Files.readString(Path.of(file), StandardCharsets.UTF_8);
            ValidationResult result = validator.validateWithResult(text);
            for (SingleValidationMessage message : result.getMessages()) {
                ResultSeverityEnum severity = message.getSeverity();
                System.out.println(file + "\t" + severity.getCode() + "\t"
                        + message.getLocationString() + "\t"
                        + message.getMessage().replace('\n', ' ').replace('\t', ' '));
                if (severity == ResultSeverityEnum.ERROR || severity == ResultSeverityEnum.FATAL) {
                    errors++;
                }
            }
        }
        System.out.flush();
        System.exit(errors == 0 ? 0 : 1);
    }
}
